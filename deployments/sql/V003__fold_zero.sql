-- The MovieLens members without official folds (tasks/movielens.py): a temporal hold-out has
-- one test fold (1) and leaves each user's earlier ratings in no test fold, test_fold 0, so
-- they are trained on in every fold ("train of fold i is every rating with test_fold <> i"
-- still holds). The new check has its own name: partitions loaded before this migration keep
-- their local copy of the old one (they hold 1..5 only) until their next load replaces them.
ALTER TABLE movielens.ratings DROP CONSTRAINT ratings_test_fold_check;
ALTER TABLE movielens.ratings
    ADD CONSTRAINT ratings_test_fold_range CHECK (test_fold BETWEEN 0 AND 5);
