import socket

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from paperops.cli import app
from settings import tracking_uri

runner = CliRunner()


def test_list_shows_ppt_with_its_profiles():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    assert "ppt" in result.output and "tiny, full" in result.output


def test_run_with_a_bad_override_exits_2_naming_the_key_before_any_work():
    result = runner.invoke(app, ["run", "ppt", "--set", "train.epochz=3"])
    assert result.exit_code == 2
    assert "train.epochz" in result.output


def test_run_unknown_paper_exits_2():
    result = runner.invoke(app, ["run", "nope"])
    assert result.exit_code == 2
    assert "unknown paper 'nope'" in result.output


def test_run_all_refuses_overrides_that_belong_to_one_paper():
    result = runner.invoke(app, ["run", "all", "--set", "train.epochs=1"])
    assert result.exit_code == 2 and "one paper" in result.output


def judged(method: list[float], baseline: list[float], name: str = "headline", **comparison) -> dict:
    """The judgement row a run's summary carries for a comparison of two variants' per-item scores."""
    import numpy as np

    from tasks.evidence import Comparison, judge_items

    c = Comparison(name, comparison.get("metric", "top1"), comparison.get("method", "ppt"),
                   comparison.get("baseline", "tome_equal_budget"), comparison.get("claim", "better"),
                   comparison.get("margin", 0.0), comparison.get("higher_is_better", True))
    per_item = {c.method: {c.metric: np.array(method)}, c.baseline: {c.metric: np.array(baseline)}}
    return judge_items(c, per_item).as_dict()


def test_headline_row_says_beats_only_when_the_item_level_interval_excludes_zero():
    from paperops.cli import headline_row

    variants = [{"variant": "ppt", "top1": 91.5}, {"variant": "tome_equal_budget", "top1": 90.25}]
    gain = judged([100.0] * 80 + [0.0] * 20, [100.0] * 50 + [0.0] * 50)
    row = headline_row({"paper": "ppt", "variants": variants, "headline": gain})
    assert row["ours"] == "91.5 (ppt)" and row["baseline"] == "90.25 (tome_equal_budget)"
    assert row["verdict"].startswith("beats tome_equal_budget (+30 [") and "paired bootstrap over 100 items" in \
        row["verdict"]
    assert row["paper figure"].startswith("79.8: DeiT-S")
    # One item in a hundred: the direction says "beats", the interval says no difference.
    tie = judged([100.0, 0.0] * 50, [0.0, 100.0] * 49 + [0.0, 0.0])
    assert headline_row({"paper": "ppt", "variants": variants, "headline": tie})["verdict"].startswith(
        "no difference from tome_equal_budget (+1 [")
    # A headline whose variants logged no per-item scores is not measured, however the point figures lean.
    unscored = judged([100.0], [0.0]) | {"interval": None, "outcome": "not measured: variant 'ppt' logged no "
                                                                      "per-item 'top1' scores"}
    assert headline_row({"paper": "ppt", "variants": variants, "headline": unscored})["verdict"] == \
        unscored["outcome"]
    assert headline_row({"paper": "ppt", "variants": variants})["verdict"] == "not judged"


def test_the_run_summary_prints_each_criterion_and_that_a_reproduction_run_registered_nothing():
    from paperops.cli import console, print_summary

    criteria = [judged([100.0] * 80 + [0.0] * 20, [100.0] * 50 + [0.0] * 50, "ppt_beats_tome_equal_budget"),
                judged([100.0] * 40 + [0.0] * 60, [100.0] * 50 + [0.0] * 50, "kept", claim="not_worse", margin=1.0)]
    summary = {"paper": "ppt", "profile": "tiny", "pipeline_run_id": "r1", "registered": False,
               "steps": {"register": "Skipped (reproduction run: not registered)"}, "variants": [],
               "decisive": criteria, "headline": None, "versions": {}, "promotion": {}}
    with console.capture() as captured:
        print_summary(summary)
    text = captured.get()
    assert "not registered: reproduction run" in text
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert any("ppt_beats_tome_equal_budget" in line and "holds" in line and "does not" not in line
               for line in lines)
    assert any(line.startswith("│ kept") and "does not hold" in line for line in lines)


def test_reproduce_refuses_a_single_seed_and_a_bad_override_before_any_work():
    result = runner.invoke(app, ["reproduce", "ppt", "--seeds", "1"])
    assert result.exit_code == 2 and "at least 2 seeds" in result.output
    result = runner.invoke(app, ["reproduce", "ppt", "--set", "train.epochz=3"])
    assert result.exit_code == 2 and "train.epochz" in result.output


def test_report_without_reproduction_runs_writes_a_page_that_says_so(tmp_path, monkeypatch):
    from tasks.tracking import configure_tracking

    # An empty store of its own: the session's store holds reproduce's tests' runs. mlflow.set_tracking_uri also
    # exports MLFLOW_TRACKING_URI, which settings.tracking_uri() prefers to PAPEROPS_HOME, so it goes too.
    monkeypatch.setenv("PAPEROPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "results.md"
    result = runner.invoke(app, ["report", "--out", str(out)])
    monkeypatch.undo()
    configure_tracking()  # mlflow's process-wide tracking URI back on the session's store
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert page.startswith("# Results\n\nGenerated by `paperops report`")
    assert "No reproduction run of this profile yet: `paperops reproduce ppt` makes one." in page


def test_the_variants_table_shows_the_declared_columns_then_the_common_ones_that_a_variant_filled():
    from paperops.cli import variants_table

    rows = [{"variant": "dense", "role": "parent", "top1": 91.25, "macs_per_image": 2.5e6, "latency_p50_ms": 3.0},
            {"variant": "ppt", "role": "method", "top1": 90.5, "macs_per_image": 1.7e6, "macs_ratio": 0.68,
             "delta_vs_parent": -0.75, "latency_p50_ms": 2.0}]
    table = variants_table({"paper": "ppt", "variants": rows})
    assert [c.header for c in table.columns] == ["variant", "role", "top-1 %", "MMACs/img", "MACs ×", "Δ vs parent",
                                                 "p50 ms"]
    assert list(table.columns[3].cells) == ["2.5", "1.7"]  # declared scale: millions of MACs
    assert list(table.columns[4].cells) == ["", "0.68"]


def test_an_exception_message_reaches_the_user_verbatim_brackets_and_all(monkeypatch):
    import flows.pipeline
    from tasks.validate import DataValidationError, FailedExpectation

    details = ("[train] expected every class to hold between 5 % and 15 % of the split; 1 of 10 rows unexpected: "
               "[share=0, label=7] [n_lines=7, split=eval_shakespeare] :warning: [bold]not markup[/bold] " + "x" * 120)
    failure = DataValidationError("data/mnist5k", "image_classification",
                                  [FailedExpectation("expect_column_values_to_be_between", "share", details)])

    def failing_pipeline(paper, profile, overrides, accept_data_change):
        raise failure

    monkeypatch.setattr(flows.pipeline, "paper_pipeline", failing_pipeline)
    result = runner.invoke(app, ["run", "ppt"])
    assert result.exit_code == 3
    assert f"  - expect_column_values_to_be_between (share): {details}\n" in result.output  # one line, as raised


def test_drift_exits_3_and_says_how_to_accept_it_and_the_flag_reaches_the_pipeline(monkeypatch):
    import flows.pipeline
    from tasks.validate import DataValidationError, FailedExpectation

    drift = FailedExpectation("expect_column_values_to_be_between", "shift", "[train+val+test vs last validated] "
                              "expected each class's mean image within 0.05; 1 of 30 rows unexpected: "
                              "[shift=0.2, split=train, label=3]")
    calls = []

    def pipeline(paper, profile, overrides, accept_data_change):
        calls.append(accept_data_change)
        if not accept_data_change:
            raise DataValidationError("data/mnist5k", "image_classification", [drift], drifted=True)
        return {"paper": paper, "profile": profile, "pipeline_run_id": "r", "steps": {}, "variants": [],
                "versions": {}, "promotion": {}}

    monkeypatch.setattr(flows.pipeline, "paper_pipeline", pipeline)
    refused = runner.invoke(app, ["run", "ppt"])
    assert refused.exit_code == 3 and "[shift=0.2, split=train, label=3]" in refused.output
    assert "run again with --accept-data-change" in refused.output
    assert runner.invoke(app, ["run", "ppt", "--accept-data-change"]).exit_code == 0
    assert calls == [False, True]


def test_an_unreadable_drift_reference_exits_3_naming_the_file(monkeypatch):
    import flows.pipeline
    from tasks.validate import DataReferenceError

    message = ("the reference of dataset 'mnist5k' (/state/data-references/image_classification/mnist5k.json) "
               "cannot be read")

    def pipeline(paper, profile, overrides, accept_data_change):
        raise DataReferenceError(message)

    monkeypatch.setattr(flows.pipeline, "paper_pipeline", pipeline)
    result = runner.invoke(app, ["run", "ppt"])
    assert result.exit_code == 3 and message in result.output and "Traceback" not in result.output


def test_data_with_an_unknown_stage_exits_4_with_the_known_ones():
    result = runner.invoke(app, ["data", "nosuchstage"])
    assert result.exit_code == 4 and isinstance(result.exception, SystemExit)
    assert "unknown stage 'nosuchstage'" in result.output and "known: dejavu_letters, digits" in result.output


@pytest.mark.parametrize("command, says", [
    (["serve", "ppt", "--port", "99999"], "--port"),
    (["serve", "ppt", "--port", "0"], "--port"),
    (["serve", "ppt", "--workers", "0"], "--workers"),
    (["serve", "ppt", "--max-request-bytes", "0"], "--max-request-bytes"),
    (["serve", "ppt", "--port", "http"], "--port"),
    (["serve", "ppt", "--host", "no-such-host.invalid"], "--host 'no-such-host.invalid' does not resolve"),
    (["serve-llm", "cbq", "--port", "70000"], "--port"),
    (["worker", "--limit", "0"], "--limit"),
])
def test_a_bad_option_value_exits_2_naming_the_option(command, says):
    result = runner.invoke(app, command)
    assert result.exit_code == 2 and says in result.output, result.output
    assert isinstance(result.exception, SystemExit)


def test_serve_on_a_port_in_use_exits_2_before_loading_anything():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "ppt", "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.output


@pytest.mark.parametrize("paper, override, says", [
    ("ppt", "compress.r=100000", "compress.r=100000 exceeds 32, the most tokens block 3 can remove"),
    ("ppt", "compress.blocks=[3,20]", "compress.blocks [20] do not exist in a model with 12 blocks"),
    ("w2s", "compress.r=9", "compress.r=9 exceeds 8, the most tokens block 1 can remove"),
    ("cbq", "compress.rank=257", "compress.rank=257 exceeds 256, min(in, out) of the model's smallest decoder"),
    ("cbq", "compress.window=5", "compress.window=5 exceeds the model's 4 decoder layers"),
    ("ppt", "data.expect.height=tall", "data.expect does not fit suite 'image_classification': height: Input"),
])
def test_a_knob_the_model_cannot_take_exits_2_before_anything_is_registered(paper, override, says):
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    versions = len(client.search_model_versions(f"name='paperops-{paper}'"))
    result = runner.invoke(app, ["run", paper, "--set", override])
    assert result.exit_code == 2 and says in result.output, result.output
    assert len(client.search_model_versions(f"name='paperops-{paper}'")) == versions


def test_run_all_runs_every_paper_then_exits_6_when_a_gate_rejected(monkeypatch):
    from recipes import available_recipes

    ran, rejecting = [], {"cbq"}

    def pipeline(paper, profile, overrides, accept_data_change):  # the CLI's side of a pipeline run: its summary
        ran.append(paper)
        rejected = paper in rejecting
        decision = {"alias": "champion", "version": "2", "promoted": not rejected, "previous_version": "1",
                    "reasons": ["size_ratio is 0.900; the gate requires <= 0.600"] if rejected else []}
        return {"paper": paper, "profile": profile, "pipeline_run_id": "r", "steps": {"promote": "Completed"},
                "variants": [], "versions": {}, "promotion": decision}

    monkeypatch.setattr("paperops.cli._run_pipeline", pipeline)
    result = runner.invoke(app, ["run", "all"])
    assert ran == list(available_recipes())  # every paper ran, the rejected one included
    assert result.exit_code == 6
    assert "  - size_ratio is 0.900; the gate requires <= 0.600" in result.output
    assert "the promotion gate rejected the candidate of cbq" in result.output
    rejecting.clear()
    assert runner.invoke(app, ["run", "all"]).exit_code == 0


@pytest.mark.filterwarnings("ignore:Logger 'prefect.flow_runs' attempted to send logs")  # no flow run here
def test_the_console_drops_prefect_tracebacks_of_handled_errors_only(capsys):
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    from paperops.cli import hide_handled_failures
    from tasks.validate import DataValidationError

    root = logging.getLogger()
    handler = PrefectConsoleHandler()  # writes to the stderr of the moment: capsys's
    root.addHandler(handler)
    try:
        hide_handled_failures(DataValidationError)
        logger = logging.getLogger("prefect.flow_runs")
        for error in (DataValidationError("data/x", "suite", []), RuntimeError("a real crash")):
            try:
                raise error
            except Exception as exc:
                logger.error("Encountered exception during execution: %r", exc, exc_info=True)
                logger.error(f"Finished in state Failed('Flow run encountered an exception: {type(exc).__name__}: "
                             f"{exc}')")
    finally:
        root.removeHandler(handler)
    printed = capsys.readouterr().err
    assert "DataValidationError" not in printed
    assert "RuntimeError('a real crash')" in printed and "Traceback" in printed
    assert "Finished in state Failed('Flow run encountered an exception: RuntimeError: a real crash')" in printed


@pytest.mark.parametrize("message", [
    "Finished in state Failed('Task run encountered an exception DataStageError: stage failed')",
    # the repr of a message that holds a ' is quoted with "
    "Finished in state Failed(\"Task run encountered an exception DataStageError: unknown stage 'glyphs'\")",
])
def test_a_handled_failures_final_state_is_left_out_whatever_its_quotes(message):
    import logging

    from paperops.cli import _HandledFailureFilter
    from tasks.data import DataStageError

    handled = _HandledFailureFilter((DataStageError,))
    assert not handled.filter(logging.LogRecord("prefect", logging.ERROR, "", 0, message, None, None))
    crash = message.replace("DataStageError", "KeyError")  # an unhandled error keeps its record
    assert handled.filter(logging.LogRecord("prefect", logging.ERROR, "", 0, crash, None, None))
