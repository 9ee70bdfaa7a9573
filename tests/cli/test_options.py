"""The command line's parser: every command's help, options reaching the flow, unknown options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import FLOW_COMMANDS, flow_parser, main, parse
from cli.options import flow_kwargs

REPO = Path(__file__).resolve().parents[2]


def given(argv: list[str]) -> dict[str, object]:
    args = parse(argv)
    return flow_kwargs(args, FLOW_COMMANDS[args.command].load().fn)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("run", ["--source TEXT", "--n-clusters N [N ...]", "--selection-metric {rmse,ndcg_at_10}",
                 "(default: rmse)", "--top-n N", "(default: 10)"]),
        ("ingest", ["--source TEXT", "--md5 TEXT", "(default: unset)"]),
        ("transform", []),
        ("train", ["--n-clusters N [N ...]", "--n-neighbors N [N ...]", "--folds N [N ...]",
                   "--kinds KIND [KIND ...]", "kmeans_knn, paper, forest", "--top-n N",
                   "(default: 10)", "--dataset-version TEXT"]),
        ("report", ["--sweep-run-id TEXT", "(default: unset)"]),
        ("health", []),
        ("serve", ["--host HOST", "(default: 127.0.0.1)", "--port PORT", "(default: 8000)",
                   "--workers WORKERS", "(default: 1)"]),
        ("server", ["start", "stop", "status"]),
    ],
)  # fmt: skip
def test_every_command_has_help_with_its_options_and_defaults(
    recsys_env: object, command: str, expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])

    out = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal width
    assert done.value.code == 0
    assert f"usage: recsys {command}" in out and "--debug" in out
    for text in expected:
        assert " ".join(text.split()) in out


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])

    out = capsys.readouterr().out
    assert done.value.code == 0
    for command in ("run", "ingest", "transform", "train", "report", "health", "serve", "server"):
        assert f"\n    {command}" in out


def test_server_start_help_shows_host_and_port(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["server", "start", "--help"])

    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "(default: 127.0.0.1)" in out and "(default: 4200)" in out


def test_train_options_reach_the_flow_as_typed_keyword_arguments() -> None:
    assert given(["train", "--n-clusters", "1", "8", "--folds", "1"]) == {
        "n_clusters": [1, 8],
        "folds": [1],
    }
    assert given(["train", "--kinds", "bias", "paper", "--selection-metric", "ndcg_at_10",
                  "--top-n", "5", "--dataset-version", "v1"]) == {
        "kinds": ["bias", "paper"], "selection_metric": "ndcg_at_10", "top_n": 5,
        "dataset_version": "v1",
    }  # fmt: skip


def test_options_not_given_keep_the_flows_defaults() -> None:
    assert given(["train"]) == {}
    assert given(["run", "--source", "/data/ml-100k"]) == {"source": "/data/ml-100k"}


def test_a_script_takes_the_same_options_as_its_command() -> None:
    args = flow_parser("train", "python flows/train.py").parse_args(["--n-neighbors", "10", "20"])

    assert args.command == "train"
    assert flow_kwargs(args, FLOW_COMMANDS["train"].load().fn) == {"n_neighbors": [10, 20]}


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--n_clusters", "1", "8"],  # the spelling a user tried: it was ignored
        ["train", "--bogus"],
        ["ingest", "extra"],
        ["server", "start", "--bogus"],
    ],
)
def test_an_unknown_option_fails_with_exit_code_2_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        parse(argv)

    err = capsys.readouterr().err
    assert done.value.code == 2
    assert err.count("\n") == 1
    assert "unrecognized arguments" in err and f"recsys {argv[0]}" in err


@pytest.mark.parametrize(
    "argv",
    [["train", "--kinds", "knn"], ["train", "--top-n", "ten"], ["train", "--selection-metric"]],
)
def test_a_bad_value_fails_with_exit_code_2_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        parse(argv)

    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1
    assert err.startswith("recsys train: error: ")


def test_a_script_rejects_an_unknown_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        flow_parser("train", "python flows/train.py").parse_args(["--n_clusters", "1"])

    assert done.value.code == 2
    assert capsys.readouterr().err.startswith("python flows/train.py: error: unrecognized")


def test_help_and_the_flows_load_neither_mlflow_nor_scikit_learn() -> None:
    # each takes seconds to import: `recsys train --help` and a run that never touches the
    # store or fits a model do without them (they load where they are used)
    probe = (
        "import sys, contextlib, io\n"
        "from cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['train', '--help'])\n"
        "import flows.pipeline, flows.health, recommender\n"
        "print(sorted({'mlflow', 'sklearn', 'matplotlib'} & set(sys.modules)))\n"
    )

    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, check=True)  # fmt: skip

    assert done.stdout.strip() == "[]"
