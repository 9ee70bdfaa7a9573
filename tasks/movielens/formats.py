"""The parsers of the three file families (ml-100k; ml-1m/ml-10m '::' files; the CSV sets) into
the same curated tables. Pure Polars, no Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

import polars as pl

from tasks.movielens.catalog import (
    ML1M_AGE_GROUPS,
    ML1M_OCCUPATIONS,
    Layout,
    MovieLensSet,
)
from tasks.movielens.errors import ArchiveError, ValidationError
from tasks.movielens.folds import FOLD_COUNT, FoldRule, assign_folds, member_folds
from tasks.movielens.validation import (
    FIRST_REJECTS,
    RATING_DTYPES,
    FileSpec,
    KnownIds,
    Parsed,
    Rule,
    apply_rules,
    as_integer,
    as_type,
    check_ratings,
    count_lines,
    describe_rejects,
    first_occurrence,
    id_rules,
    is_consequence,
    rating_dtypes,
    read_csv_fields,
    read_fields,
    read_typed_fields,
    rejected_ids,
    without_bom,
)

GENRE_COUNT = 19


GENRE_COLUMNS = tuple(f"genre_{i}" for i in range(GENRE_COUNT))
RATINGS_SPEC = FileSpec("u.data", "\t", ("user_id", "item_id", "rating", "timestamp"))
ITEMS_SPEC = FileSpec(
    "u.item",
    "|",
    ("item_id", "title", "release_date", "video_release_date", "imdb_url", *GENRE_COLUMNS),
    encoding="latin-1",
)
USERS_SPEC = FileSpec("u.user", "|", ("user_id", "age", "gender", "occupation", "zip_code"))
GENRES_SPEC = FileSpec("u.genre", "|", ("name", "genre_id"))
OCCUPATIONS_SPEC = FileSpec("u.occupation", "|", ("name",))


def parse_users(data: bytes, occupations: set[str] | None) -> Parsed:
    parsed = read_fields(data, USERS_SPEC)
    gender = pl.col("gender").str.strip_chars()
    rules = [
        *id_rules("user_id", "user"),
        Rule("age", as_integer("age").is_between(1, 120), "age must be an integer in 1..120"),
        Rule("gender", gender.is_in(["M", "F"]), "gender must be M or F"),
        Rule("zip_code", pl.col("zip_code").str.strip_chars() != "", "zip code is empty"),
    ]
    if occupations is not None:  # (an empty u.occupation lists none)
        rules.append(
            Rule(
                "occupation",
                pl.col("occupation").str.strip_chars().is_in(sorted(occupations)),
                "occupation not listed in u.occupation",
            )
        )
    checked = apply_rules(parsed, USERS_SPEC.name, rules)
    rows = checked.rows.select(
        as_type("user_id", pl.Int32()).alias("user_id"),
        as_type("age", pl.Int16()).alias("age"),
        gender.alias("gender"),
        pl.col("occupation").str.strip_chars(),
        pl.col("zip_code").str.strip_chars(),
    )
    users = Parsed(rows=rows.sort("user_id"), rejects=checked.rejects)
    return with_removed_ids(parsed, users, USERS_SPEC.separator, "user_id")


def with_removed_ids(fields: Parsed, parsed: Parsed, separator: str, field: str) -> Parsed:
    """``parsed`` (a users or items file) with the ids that only its rejected lines hold."""
    return replace(parsed, removed_ids=rejected_ids(fields, parsed, separator, field))


def _date(name: str) -> pl.Expr:
    return pl.col(name).str.strip_chars().str.to_date("%d-%b-%Y", strict=False)


def _date_ok(name: str) -> pl.Expr:
    text = pl.col(name).str.strip_chars()
    return (text == "") | _date(name).is_not_null()


def parse_items(data: bytes) -> Parsed:
    parsed = read_fields(data, ITEMS_SPEC)
    rules = [
        *id_rules("item_id", "item"),
        Rule("title", pl.col("title").str.strip_chars() != "", "title is empty"),
        Rule("release_date", _date_ok("release_date"), "release date is not like 01-Jan-1995"),
        Rule(
            "video_release_date",
            _date_ok("video_release_date"),
            "video release date is not like 01-Jan-1995",
        ),
        *(
            Rule(
                column,
                pl.col(column).str.strip_chars().is_in(["0", "1"]),
                "genre flag must be 0 or 1",
            )
            for column in GENRE_COLUMNS
        ),
    ]
    checked = apply_rules(parsed, ITEMS_SPEC.name, rules)
    rows = checked.rows.select(
        as_type("item_id", pl.Int32()).alias("item_id"),
        pl.col("title").str.strip_chars(),
        _date("release_date").alias("release_date"),
        _date("video_release_date").alias("video_release_date"),
        pl.col("imdb_url").str.strip_chars().replace("", None).alias("imdb_url"),
        *(as_type(column, pl.Int8()).alias(column) for column in GENRE_COLUMNS),
    )
    items = Parsed(rows=rows.sort("item_id"), rejects=checked.rejects)
    return with_removed_ids(parsed, items, ITEMS_SPEC.separator, "item_id")


def parse_ratings(
    data: bytes, file: str, known: KnownIds, fetched_at: datetime | None = None
) -> Parsed:
    """An ml-100k ratings file (``u.data``, ``u1.test``...) against the known users and items."""
    spec = FileSpec(file, RATINGS_SPEC.separator, RATINGS_SPEC.columns)
    fields = read_typed_fields(data, spec, RATING_DTYPES) or read_fields(data, spec)
    return check_ratings(fields, file, known, not_after=fetched_at)


def parse_genres(data: bytes) -> Parsed:
    parsed = read_fields(data, GENRES_SPEC)
    rules = [
        Rule(
            "genre_id",
            as_integer("genre_id").is_between(0, GENRE_COUNT - 1),
            "genre id must be 0..18",
        ),
        Rule("genre_id", first_occurrence(as_integer("genre_id")), "duplicate genre id"),
    ]
    checked = apply_rules(parsed, GENRES_SPEC.name, rules)
    rows = checked.rows.select(as_type("genre_id", pl.Int16()).alias("genre_id"), "name")
    return Parsed(rows=rows.sort("genre_id"), rejects=checked.rejects)


def parse_occupations(data: bytes) -> Parsed:
    parsed = read_fields(data, OCCUPATIONS_SPEC)
    rules = [
        Rule("name", first_occurrence(pl.col("name").str.strip_chars()), "duplicate occupation")
    ]
    checked = apply_rules(parsed, OCCUPATIONS_SPEC.name, rules)
    return Parsed(
        rows=checked.rows.select(pl.col("name").str.strip_chars()), rejects=checked.rejects
    )


def check_official_folds(
    folds: pl.DataFrame,
    fold_files: dict[str, bytes],
    known: KnownIds,
    ratings_rejects: pl.DataFrame,
    rejected_pairs: pl.DataFrame | None = None,
) -> None:
    """Fail when a present u<i>.test does not hold exactly the derived test fold i.

    Every official line counts, a rejected one too (a line of a user that u.user lacks is a
    disagreement, not ignored); ``rejected_pairs``, the pairs of u.data's rejected lines, are
    in no derived fold, so an official line holding one is no disagreement. The message names
    u.data's own rejects first (``ratings_rejects``): they are the likelier cause.
    """
    for fold in range(1, FOLD_COUNT + 1):
        name = f"u{fold}.test"
        if name not in fold_files:
            continue
        official = parse_ratings(fold_files[name], name, known)
        derived = folds.filter(pl.col("test_fold") == fold).select("user_id", "item_id")
        pairs = official.rows.select("user_id", "item_id")
        if official.rejects.height:
            pairs = pl.concat([pairs, line_pairs(fold_files[name], name, official.rejects)])
        missing = derived.join(pairs, on=["user_id", "item_id"], how="anti").height
        unexpected = pairs.join(derived, on=["user_id", "item_id"], how="anti")
        if rejected_pairs is not None:
            unexpected = unexpected.join(rejected_pairs, on=["user_id", "item_id"], how="anti")
        extra = unexpected.height
        if missing or extra:
            causes = describe_rejects(ratings_rejects.filter(~is_consequence()), FIRST_REJECTS)
            raise ValidationError(
                (f"u.data's rejected lines first: {causes}; then " if causes else "")
                + f"{name}: disagrees with the folds derived from u.data by mku.sh "
                f"({missing} derived pairs missing, {extra} unexpected pairs)"
            )


@dataclass
class CuratedTables:
    ratings: pl.DataFrame
    items: pl.DataFrame
    genres: pl.DataFrame
    item_genres: pl.DataFrame
    users: pl.DataFrame
    occupations: pl.DataFrame
    folds: pl.DataFrame
    rejects: pl.DataFrame

    def tables(self) -> dict[str, pl.DataFrame]:
        return {
            "ratings": self.ratings,
            "items": self.items,
            "genres": self.genres,
            "item_genres": self.item_genres,
            "users": self.users,
            "occupations": self.occupations,
            "folds": self.folds,
        }


def curate_ml100k(files: dict[str, bytes], fetched_at: datetime | None = None) -> CuratedTables:
    """Parse and validate the ml-100k files into typed tables plus every rejected row; no
    rating may be later than ``fetched_at`` (the fetch of the source; default now)."""
    files = {name: without_bom(data) for name, data in files.items()}
    occupations = parse_occupations(files["u.occupation"]) if "u.occupation" in files else None
    genres = parse_genres(files["u.genre"]) if "u.genre" in files else None
    users = parse_users(
        files["u.user"], set(occupations.rows["name"]) if occupations is not None else None
    )
    items = parse_items(files["u.item"])
    known = KnownIds(
        items.rows["item_id"],
        "u.item",
        users.rows["user_id"],
        "u.user",
        rejected_users=users.removed_ids,
        rejected_items=items.removed_ids,
    )
    ratings = parse_ratings(files["u.data"], "u.data", known, fetched_at)
    require_ratings(ratings, "u.data")
    refuse_truncated_last_line(files["u.data"], "u.data", ratings.rejects)
    # mku.sh's fifths of u.data's lines, up to its last (blank lines after it count for nothing)
    last_line = pl.concat([ratings.rows["line"], ratings.rejects["line"]]).max()
    folds = assign_folds(ratings.rows, int(last_line))  # type: ignore[arg-type]
    check_official_folds(
        folds,
        {n: d for n, d in files.items() if n.endswith(".test")},
        known,
        ratings.rejects,
        line_pairs(files["u.data"], "u.data", ratings.rejects) if ratings.rejects.height else None,
    )
    genre_names = genres.rows if genres is not None else _default_genres()
    rejects = pl.concat(
        [p.rejects for p in (occupations, genres, users, items, ratings) if p is not None]
    )
    return CuratedTables(
        ratings=ratings.rows.drop("line"),
        items=items.rows.drop(GENRE_COLUMNS).with_columns(
            pl.col("release_date").dt.year().cast(pl.Int16).alias("release_year")
        ),
        genres=genre_names,
        # a genre whose u.genre line was rejected has no flags
        item_genres=_item_genres(items.rows).filter(
            pl.col("genre_id").is_in(genre_names["genre_id"].implode())
        ),
        users=users.rows,
        occupations=occupations.rows if occupations is not None else _occupations_of(users.rows),
        folds=folds,
        rejects=rejects.sort("file", "line"),
    )


def require_ratings(ratings: Parsed, file: str) -> None:
    """A ratings file without one valid rating is no dataset: fail, naming the first reject."""
    if ratings.rows.height:
        return
    first = ratings.rejects.sort("line").head(1).to_dicts()
    reason = f"; line {first[0]['line']}: {first[0]['reason']}" if first else ""
    raise ValidationError(
        f"{file}: no valid ratings ({ratings.rejects['line'].n_unique()} lines rejected{reason})"
    )


def refuse_truncated_last_line(data: bytes, file: str, rejects: pl.DataFrame) -> None:
    """Fail when the ratings file's last line is cut short: GroupLens ends every line with a
    newline, so a rejected last line without one is a truncated file, not a bad rating."""
    if not data or data.endswith(b"\n"):
        return
    last = count_lines(data)
    cut = rejects.filter(pl.col("line") == last).head(1).to_dicts()
    if cut:
        tail = data[data.rfind(b"\n") + 1 :][:80]
        raise ValidationError(
            f"{file} line {last}: the last line {tail!r} ends without a newline "
            f"({cut[0]['reason']}): the file is truncated"
        )


def line_pairs(data: bytes, file: str, rejects: pl.DataFrame) -> pl.DataFrame:
    """The (user, item) pairs of a ratings file's rejected lines, where they read as numbers."""
    fields = read_fields(data, FileSpec(file, RATINGS_SPEC.separator, RATINGS_SPEC.columns))
    lines = fields.rows.filter(pl.col("line").is_in(rejects["line"].implode()))
    return lines.select(
        as_type("user_id", pl.Int32()).alias("user_id"),
        as_type("item_id", pl.Int32()).alias("item_id"),
    ).drop_nulls()


def _item_genres(items: pl.DataFrame) -> pl.DataFrame:
    return (
        items.select("item_id", *GENRE_COLUMNS)
        .unpivot(index="item_id", variable_name="genre", value_name="flag")
        .filter(pl.col("flag") == 1)
        .select(
            "item_id",
            pl.col("genre").str.strip_prefix("genre_").cast(pl.Int16).alias("genre_id"),
        )
        .sort("item_id", "genre_id")
    )


def _default_genres() -> pl.DataFrame:
    return pl.DataFrame(
        {"genre_id": list(range(GENRE_COUNT)), "name": [f"genre_{i}" for i in range(GENRE_COUNT)]},
        schema={"genre_id": pl.Int16, "name": pl.String},
    )


def _occupations_of(users: pl.DataFrame) -> pl.DataFrame:
    return users.select(pl.col("occupation").unique().sort().alias("name"))


# --- the other members: '::'-separated .dat files and CSV files -------------------------------
RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
MOVIE_COLUMNS = ("item_id", "title", "genres")
LINK_COLUMNS = ("item_id", "imdb_id", "tmdb_id")
ML1M_USER_COLUMNS = ("user_id", "gender", "age", "occupation", "zip_code")
CSV_HEADERS: dict[tuple[str, ...], tuple[str, ...]] = {
    RATING_COLUMNS: ("userId", "movieId", "rating", "timestamp"),
    MOVIE_COLUMNS: ("movieId", "title", "genres"),
    LINK_COLUMNS: ("movieId", "imdbId", "tmdbId"),
}


TITLE_YEAR = r"\((\d{4})(?:[-–]\d{4})?\)\s*$"  # "Heat (1995)", "Babylon 5 (1993-1998)"
IMDB_TITLE_URL = "https://www.imdb.com/title/tt{}/"


def member_fields(
    member: MovieLensSet, files: dict[str, bytes], name: str, columns: tuple[str, ...]
) -> Parsed:
    """The string fields of one of ``member``'s files, in its layout."""
    if member.layout is Layout.CSV:
        spec = FileSpec(
            name, ",", columns, header=CSV_HEADERS[columns], quoted=columns == MOVIE_COLUMNS
        )
        return read_csv_fields(files[name], spec)
    return read_fields(files[name], FileSpec(name, "::", columns, encoding=member.encoding))


def member_rating_fields(member: MovieLensSet, files: dict[str, bytes]) -> Parsed:
    """The fields of ``member``'s ratings file: typed when the file is clean."""
    name, data = member.ratings_file, files[member.ratings_file]
    dtypes = rating_dtypes(member.half_stars)
    if member.layout is Layout.CSV:
        spec = FileSpec(name, ",", RATING_COLUMNS, header=CSV_HEADERS[RATING_COLUMNS])
        return read_typed_fields(data, spec, dtypes) or read_csv_fields(data, spec)
    # Polars splits on one byte, not "::": the typed reader gets tabs instead, unless the file
    # has tabs of its own (the line reader then names those lines)
    spec = FileSpec(name, "\t", RATING_COLUMNS)
    typed = None if b"\t" in data else read_typed_fields(data.replace(b"::", b"\t"), spec, dtypes)
    return typed or member_fields(member, files, name, RATING_COLUMNS)


def parse_movies(parsed: Parsed, file: str) -> Parsed:
    """Movies with the release year from the title ("Heat (1995)") and their genre names."""
    rules = [
        *id_rules("item_id", "item"),
        Rule("title", pl.col("title").str.strip_chars() != "", "title is empty"),
        Rule(
            "genres",
            pl.col("genres").str.strip_chars() != "",
            "genres is empty (a movie without any says (no genres listed))",
        ),
    ]
    checked = apply_rules(parsed, file, rules)
    title = pl.col("title").str.strip_chars()
    rows = checked.rows.select(
        as_type("item_id", pl.Int32()).alias("item_id"),
        title.alias("title"),
        pl.lit(None, pl.Date).alias("release_date"),
        pl.lit(None, pl.Date).alias("video_release_date"),
        pl.lit(None, pl.String).alias("imdb_url"),
        title.str.extract(TITLE_YEAR, 1).cast(pl.Int16, strict=False).alias("release_year"),
        pl.col("genres").str.strip_chars().str.split("|").alias("genres"),
    )
    return Parsed(rows=rows.sort("item_id"), rejects=checked.rejects)


def parse_links(parsed: Parsed, file: str) -> Parsed:
    """Each movie's IMDb id (links.csv), as the URL of its IMDb page."""
    imdb_id = pl.col("imdb_id").str.strip_chars()
    rules = [
        *id_rules("item_id", "item"),
        Rule("imdb_id", imdb_id.str.contains(r"^\d+$"), "IMDb id must be digits"),
    ]
    checked = apply_rules(parsed, file, rules)
    rows = checked.rows.select(
        as_type("item_id", pl.Int32()).alias("item_id"),
        pl.format(IMDB_TITLE_URL, imdb_id).alias("imdb_url"),
    )
    return Parsed(rows=rows, rejects=checked.rejects)


def parse_ml1m_users(parsed: Parsed, file: str) -> Parsed:
    """ml-1m's users: the age group's lower bound as the age, occupation codes as names."""
    gender = pl.col("gender").str.strip_chars()
    code = as_integer("occupation")
    rules = [
        *id_rules("user_id", "user"),
        Rule("gender", gender.is_in(["M", "F"]), "gender must be M or F"),
        Rule(
            "age",
            as_integer("age").is_in(ML1M_AGE_GROUPS),
            f"age must be an age group of {', '.join(map(str, ML1M_AGE_GROUPS))}",
        ),
        Rule(
            "occupation",
            code.is_between(0, len(ML1M_OCCUPATIONS) - 1),
            f"occupation must be a code 0..{len(ML1M_OCCUPATIONS) - 1}",
        ),
        Rule("zip_code", pl.col("zip_code").str.strip_chars() != "", "zip code is empty"),
    ]
    checked = apply_rules(parsed, file, rules)
    codes = list(range(len(ML1M_OCCUPATIONS)))
    rows = checked.rows.select(
        as_type("user_id", pl.Int32()).alias("user_id"),
        as_type("age", pl.Int16()).alias("age"),
        gender.alias("gender"),
        code.replace_strict(codes, list(ML1M_OCCUPATIONS), return_dtype=pl.String).alias(
            "occupation"
        ),
        pl.col("zip_code").str.strip_chars(),
    )
    return Parsed(rows=rows.sort("user_id"), rejects=checked.rejects)


def users_of(ratings: pl.DataFrame) -> pl.DataFrame:
    """The users of a member without a users file: their ids, no demographics."""
    return ratings.select(pl.col("user_id").unique().sort()).with_columns(
        pl.lit(None, pl.Int16).alias("age"),
        pl.lit(None, pl.String).alias("gender"),
        pl.lit(None, pl.String).alias("occupation"),
        pl.lit(None, pl.String).alias("zip_code"),
    )


def movie_genres(movies: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(genres, item_genres) from the movies' genre lists; ids follow the names' sort order."""
    pairs = (
        movies.select("item_id", pl.col("genres").alias("name"))
        .explode("name")
        .with_columns(pl.col("name").str.strip_chars())
        .filter(pl.col("name") != "")
    )
    genres = (
        pairs.select(pl.col("name").unique().sort())
        .with_row_index("genre_id")
        .select(pl.col("genre_id").cast(pl.Int16), "name")
    )
    item_genres = (
        pairs.join(genres, on="name")
        .select("item_id", "genre_id")
        .unique()
        .sort("item_id", "genre_id")
    )
    return genres, item_genres


def curate_member(
    member: MovieLensSet,
    files: dict[str, bytes],
    rule: FoldRule,
    fetched_at: datetime | None = None,
) -> CuratedTables:
    """Parse and validate a .dat or CSV member into the same tables as ml-100k's."""
    require_parsed_files(member, files)
    files = {name: without_bom(data) for name, data in files.items()}
    separator = "," if member.layout is Layout.CSV else "::"
    users = None
    if member.users_file:
        user_fields = member_fields(member, files, member.users_file, ML1M_USER_COLUMNS)
        users = with_removed_ids(
            user_fields, parse_ml1m_users(user_fields, member.users_file), separator, "user_id"
        )
    movie_fields = member_fields(member, files, member.items_file, MOVIE_COLUMNS)
    movies = with_removed_ids(
        movie_fields, parse_movies(movie_fields, member.items_file), separator, "item_id"
    )
    links = (
        parse_links(
            member_fields(member, files, member.links_file, LINK_COLUMNS), member.links_file
        )
        if member.links_file and member.links_file in files
        else None
    )
    ratings = check_ratings(
        member_rating_fields(member, files),
        member.ratings_file,
        KnownIds(
            movies.rows["item_id"],
            member.items_file,
            users.rows["user_id"] if users is not None else None,
            member.users_file or "",
            rejected_users=users.removed_ids if users is not None else None,
            rejected_items=movies.removed_ids,
        ),
        half_stars=member.half_stars,
        not_after=fetched_at,
    )
    require_ratings(ratings, member.ratings_file)
    refuse_truncated_last_line(files[member.ratings_file], member.ratings_file, ratings.rejects)
    genres, item_genres = movie_genres(movies.rows)
    items = movies.rows.drop("genres")
    if links is not None:
        urls = links.rows.rename({"imdb_url": "link"})
        items = (
            items.join(urls, on="item_id", how="left")
            .with_columns(pl.col("link").alias("imdb_url"))
            .drop("link")
        )
    rejects = pl.concat([p.rejects for p in (users, movies, links, ratings) if p is not None])
    return CuratedTables(
        ratings=ratings.rows.drop("line"),
        items=items.sort("item_id"),
        genres=genres,
        item_genres=item_genres,
        users=users.rows if users is not None else users_of(ratings.rows),
        occupations=pl.DataFrame(
            {"name": list(ML1M_OCCUPATIONS) if member.users_file else []},
            schema={"name": pl.String},
        ),
        folds=member_folds(ratings.rows, rule),
        rejects=rejects.sort("file", "line"),
    )


def require_parsed_files(member: MovieLensSet, files: dict[str, bytes]) -> None:
    """The same error as the ingest's when a required file of the member is absent."""
    missing = [name for name in member.required_files if name not in files]
    if missing:
        raise ArchiveError(f"{member.name}: {member.name} file(s) {', '.join(missing)} missing")


def curate_files(
    member: MovieLensSet,
    files: dict[str, bytes],
    rule: FoldRule,
    fetched_at: datetime | None = None,
) -> CuratedTables:
    """The curated tables of any member, from its raw files by name; no rating may be later
    than ``fetched_at``, the fetch of the source (default now)."""
    if member.layout is Layout.ML100K:
        require_parsed_files(member, files)
        return curate_ml100k(files, fetched_at)
    return curate_member(member, files, rule, fetched_at)
