-- The service's answers (api/): one row per /recommendations or /predict answer, written by the
-- service's background batch writer. request_id is the answer's identity: a batch replayed from
-- the spool after an outage inserts nothing twice (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE serving.predictions (
    request_id     uuid PRIMARY KEY,
    answered_at    timestamptz NOT NULL,
    endpoint       text NOT NULL,
    dataset        text NOT NULL,
    user_id        integer,
    items          integer[] NOT NULL,
    scores         double precision[] NOT NULL,
    model_version  text NOT NULL,
    strategy       text NOT NULL,
    latency_ms     double precision NOT NULL
);
CREATE INDEX predictions_answered ON serving.predictions (answered_at);
CREATE INDEX predictions_user ON serving.predictions (dataset, user_id);

-- Ratings given through the service (POST /users/{id}/ratings), for users known to the model or
-- new. The service folds them in at once (a later rating of the same pair replaces the earlier
-- one) and again after every restart or model change; training reads the loaded dataset version
-- only, so these stay folded in, never trained on, until a dataset version holds them.
CREATE TABLE serving.user_ratings (
    rating_id  bigserial PRIMARY KEY,
    dataset    text NOT NULL,
    user_id    integer NOT NULL,
    item_id    integer NOT NULL,
    rating     real NOT NULL,
    rated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX user_ratings_user ON serving.user_ratings (dataset, user_id, rating_id);
