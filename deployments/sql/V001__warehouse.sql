-- The warehouse: MovieLens tables, features, serving, operations.
-- Every dataset table is partitioned by dataset, so several MovieLens members live side by
-- side and a load swaps one member's partitions whole (see tasks/warehouse.py).
CREATE SCHEMA IF NOT EXISTS movielens;
CREATE SCHEMA IF NOT EXISTS features;
CREATE SCHEMA IF NOT EXISTS serving;
CREATE SCHEMA IF NOT EXISTS ops;

CREATE TABLE movielens.datasets (
    dataset     text PRIMARY KEY,
    version     text NOT NULL,
    loaded_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE movielens.genres (
    dataset   text NOT NULL,
    genre_id  smallint NOT NULL,
    name      text NOT NULL,
    PRIMARY KEY (dataset, genre_id)
) PARTITION BY LIST (dataset);

CREATE TABLE movielens.occupations (
    dataset  text NOT NULL,
    name     text NOT NULL,
    PRIMARY KEY (dataset, name)
) PARTITION BY LIST (dataset);

CREATE TABLE movielens.users (
    dataset     text NOT NULL,
    user_id     integer NOT NULL CHECK (user_id > 0),
    age         smallint CHECK (age BETWEEN 1 AND 120),
    gender      text CHECK (gender IN ('M', 'F')),
    occupation  text,
    zip_code    text,
    PRIMARY KEY (dataset, user_id),
    FOREIGN KEY (dataset, occupation) REFERENCES movielens.occupations (dataset, name)
) PARTITION BY LIST (dataset);

CREATE TABLE movielens.items (
    dataset             text NOT NULL,
    item_id             integer NOT NULL CHECK (item_id > 0),
    title               text NOT NULL,
    release_date        date,
    video_release_date  date,
    imdb_url            text,
    release_year        smallint,
    PRIMARY KEY (dataset, item_id)
) PARTITION BY LIST (dataset);

CREATE TABLE movielens.item_genres (
    dataset   text NOT NULL,
    item_id   integer NOT NULL,
    genre_id  smallint NOT NULL,
    PRIMARY KEY (dataset, item_id, genre_id),
    FOREIGN KEY (dataset, item_id) REFERENCES movielens.items (dataset, item_id),
    FOREIGN KEY (dataset, genre_id) REFERENCES movielens.genres (dataset, genre_id)
) PARTITION BY LIST (dataset);
CREATE INDEX item_genres_genre ON movielens.item_genres (dataset, genre_id);

-- test_fold: the official fold whose test set holds the rating (1..5); train of fold i is
-- every rating with test_fold <> i.
CREATE TABLE movielens.ratings (
    dataset    text NOT NULL,
    user_id    integer NOT NULL,
    item_id    integer NOT NULL,
    rating     real NOT NULL CHECK (rating BETWEEN 0.5 AND 5),
    rated_at   timestamptz NOT NULL,
    test_fold  smallint NOT NULL CHECK (test_fold BETWEEN 1 AND 5),
    PRIMARY KEY (dataset, user_id, item_id),
    FOREIGN KEY (dataset, user_id) REFERENCES movielens.users (dataset, user_id),
    FOREIGN KEY (dataset, item_id) REFERENCES movielens.items (dataset, item_id)
) PARTITION BY LIST (dataset);
-- No secondary indexes: the flows read a dataset's ratings whole (one partition), and each
-- index would be rebuilt by every load.

CREATE VIEW movielens.folds AS
    SELECT dataset, user_id, item_id, test_fold FROM movielens.ratings;

CREATE TABLE features.item_features (
    dataset          text NOT NULL,
    item_id          integer NOT NULL,
    release_year     smallint,
    genres           smallint[] NOT NULL,
    rating_count     integer NOT NULL,
    rating_mean      double precision,
    damped_mean      double precision NOT NULL,
    popularity_rank  integer NOT NULL,
    PRIMARY KEY (dataset, item_id),
    FOREIGN KEY (dataset, item_id) REFERENCES movielens.items (dataset, item_id)
) PARTITION BY LIST (dataset);

CREATE TABLE features.user_features (
    dataset          text NOT NULL,
    user_id          integer NOT NULL,
    age              smallint,
    gender           text,
    occupation       text,
    rating_count     integer NOT NULL,
    rating_mean      double precision,
    rating_std       double precision,
    genre_affinity   double precision[],
    favourite_genre  text,
    PRIMARY KEY (dataset, user_id),
    FOREIGN KEY (dataset, user_id) REFERENCES movielens.users (dataset, user_id)
) PARTITION BY LIST (dataset);

CREATE TABLE serving.recommendations (
    model_name     text NOT NULL,
    model_version  text NOT NULL,
    dataset        text NOT NULL,
    user_id        integer NOT NULL,
    rank           smallint NOT NULL CHECK (rank >= 1),
    item_id        integer NOT NULL,
    score          double precision NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, model_version, dataset, user_id, rank)
);
CREATE INDEX recommendations_user ON serving.recommendations (dataset, user_id);

CREATE TABLE ops.loads (
    load_id      bigserial PRIMARY KEY,
    dataset      text NOT NULL,
    version      text NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    row_counts   jsonb NOT NULL,
    seconds      jsonb NOT NULL
);
CREATE INDEX loads_dataset ON ops.loads (dataset, finished_at DESC);

CREATE TABLE ops.telemetry_outbox (
    outbox_id     bigserial PRIMARY KEY,
    created_at    timestamptz NOT NULL DEFAULT now(),
    kind          text NOT NULL,
    payload       jsonb NOT NULL,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    delivered_at  timestamptz
);
CREATE INDEX telemetry_outbox_pending ON ops.telemetry_outbox (outbox_id)
    WHERE delivered_at IS NULL;
