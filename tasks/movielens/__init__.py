"""MovieLens, from a GroupLens archive to curated tables: the family's catalog, the sources,
the validation engine, the file formats, the folds, and the curation task."""
