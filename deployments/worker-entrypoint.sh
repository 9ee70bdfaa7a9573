#!/bin/sh
# The worker container's start, every step idempotent (restarts are safe): Prefect's result
# storage block on MinIO, the process work pool, the deployments of prefect.yaml, then the
# worker itself with its health endpoint on :8080 (the compose healthcheck).
set -eu
cd "$RECSYS_PROJECT_DIR"

RECSYS_WORK_POOL="$(python -c 'from tasks.config import load_settings; print(load_settings().work_pool)')"
export RECSYS_WORK_POOL

# On an S3 lake, cached task results live beside it (S3Bucket block "recsys-results"), shared
# by every worker; PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK in the environment points runs at it.
python -c '
from tasks.config import load_settings
from tasks.orchestration import save_result_storage_block

settings = load_settings()
if settings.lake_is_s3:
    print("Prefect result storage:", save_result_storage_block(settings))
'

prefect work-pool inspect "$RECSYS_WORK_POOL" >/dev/null 2>&1 \
  || prefect work-pool create "$RECSYS_WORK_POOL" --type process
# RECSYS_PROJECT_DIR unset while deploying: the pull step keeps the placeholder and every worker
# (this container, or one started from a clone) enters its own checkout
env -u RECSYS_PROJECT_DIR prefect --no-prompt deploy --all
exec prefect worker start --pool "$RECSYS_WORK_POOL" --with-healthcheck
