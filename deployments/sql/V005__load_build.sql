-- The code that built a load (its data code version, tasks/caching.py): a load of the same
-- data version by changed parsing or feature code replaces the loaded one, where the version
-- alone would call it already loaded. Loads from before this column have none, so their next
-- load replaces them.
ALTER TABLE movielens.datasets ADD COLUMN build text;
ALTER TABLE ops.loads ADD COLUMN build text;
