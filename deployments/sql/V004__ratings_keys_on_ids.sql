-- Ratings keep their keys on each dataset's partition, on the ids alone: the primary key
-- (user_id, item_id), and foreign keys to the same dataset's users and items partitions (their
-- ids are unique there). A partition holds one dataset (its CHECK says which), so these are the
-- same keys as (dataset, ...) on the parent, but PostgreSQL builds and checks them on two
-- integers instead of a text and two integers: 40% of a 10M-rating load's key work
-- (tasks/warehouse.py, PARTITION_KEYS, adds them to every new partition before it is attached).
-- planned as the loads plan them (tasks/warehouse.py): sorts in memory, hash anti-joins
SET LOCAL maintenance_work_mem = '1GB';
SET LOCAL enable_mergejoin = off;
SET LOCAL enable_nestloop = off;
ALTER TABLE movielens.ratings DROP CONSTRAINT ratings_dataset_user_id_fkey;
ALTER TABLE movielens.ratings DROP CONSTRAINT ratings_dataset_item_id_fkey;
ALTER TABLE movielens.ratings DROP CONSTRAINT ratings_pkey;

DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT r.inhrelid::regclass AS ratings, u.inhrelid::regclass AS users,
               i.inhrelid::regclass AS items
        FROM pg_inherits r
        JOIN pg_class rc ON rc.oid = r.inhrelid
        JOIN pg_inherits u ON u.inhparent = 'movielens.users'::regclass
        JOIN pg_class uc ON uc.oid = u.inhrelid
            AND pg_get_expr(uc.relpartbound, uc.oid) = pg_get_expr(rc.relpartbound, rc.oid)
        JOIN pg_inherits i ON i.inhparent = 'movielens.items'::regclass
        JOIN pg_class ic ON ic.oid = i.inhrelid
            AND pg_get_expr(ic.relpartbound, ic.oid) = pg_get_expr(rc.relpartbound, rc.oid)
        WHERE r.inhparent = 'movielens.ratings'::regclass
    LOOP
        -- partitions loaded before this migration have none of these keys (a partition that
        -- does is left as it is)
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = part.users AND contype = 'u') THEN
            EXECUTE format('ALTER TABLE %s ADD UNIQUE (user_id)', part.users);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = part.items AND contype = 'u') THEN
            EXECUTE format('ALTER TABLE %s ADD UNIQUE (item_id)', part.items);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = part.ratings AND contype = 'p') THEN
            EXECUTE format('ALTER TABLE %s ADD PRIMARY KEY (user_id, item_id)', part.ratings);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_constraint
                       WHERE conrelid = part.ratings AND confrelid = part.users) THEN
            EXECUTE format('ALTER TABLE %s ADD FOREIGN KEY (user_id) REFERENCES %s (user_id)',
                           part.ratings, part.users);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_constraint
                       WHERE conrelid = part.ratings AND confrelid = part.items) THEN
            EXECUTE format('ALTER TABLE %s ADD FOREIGN KEY (item_id) REFERENCES %s (item_id)',
                           part.ratings, part.items);
        END IF;
    END LOOP;
END
$$;
