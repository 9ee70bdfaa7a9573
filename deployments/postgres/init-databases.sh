#!/bin/sh
# First start of the compose PostgreSQL only (docker-entrypoint-initdb.d): one role and one
# database each for the warehouse, Prefect's server and MLflow's backend store. Passwords come
# from the container's environment (docker-compose.yml, from .env).
set -eu

create_database() {  # role, password, database
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=role="$1" --set=password="$2" --set=database="$3" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"database" OWNER :"role";
SQL
}

create_database recsys "$DB_PASSWORD_WAREHOUSE" recsys
create_database prefect "$DB_PASSWORD_PREFECT" prefect
create_database mlflow "$DB_PASSWORD_MLFLOW" mlflow
