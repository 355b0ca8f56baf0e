"""The sevo entry point runs in-process."""

from __future__ import annotations

import json

import pytest

from streaming.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "version" in capsys.readouterr().out


def test_version_json(capsys):
    assert main(["version", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"sevo-engine", "torch", "numpy", "scipy", "python"} <= set(info)


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: sevo" in capsys.readouterr().out


def _parsed(*argv: str):
    from streaming.cli import build_parser

    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    "command",
    [("replay", "ml-100k"), ("run", "--bootstrap", "h:1", "--topic", "t", "--checkpoint-dir", "c")],
)
def test_online_cli_defaults_are_the_config_defaults(command):
    """One source of truth: with no options, the CLI builds exactly ``OnlineConfig()`` and
    the pipeline settings of ``PipelineConfig`` (run) / ``PipelineConfig.for_replay()``."""
    from engine.config import NEW_ITEM_POLICIES, ONLINE_MODELS, OPTIMIZERS, OnlineConfig
    from streaming.cli import _online_config, build_parser
    from streaming.config import PipelineConfig
    from streaming.sources.kafka import KafkaConfig

    args = _parsed(*command)
    assert _online_config(args) == OnlineConfig()
    pipeline = PipelineConfig.for_replay() if command[0] == "replay" else PipelineConfig()
    assert args.checkpoint_every == pipeline.checkpoint_every_events
    assert args.window == pipeline.prequential_window
    if command[0] == "replay":
        assert args.batch_size == pipeline.max_batch
    else:
        kafka = KafkaConfig(bootstrap="h:1", topic="t")
        assert args.max_batch == pipeline.max_batch
        assert args.batch_timeout_ms == pipeline.batch_timeout_ms
        assert args.checkpoint_interval == pipeline.checkpoint_every_s
        assert (args.group, args.client_id) == (kafka.group, kafka.client_id)
        assert args.session_timeout_ms == kafka.session_timeout_ms
        assert args.connect_timeout == kafka.connect_timeout_s
    sub = build_parser()._subparsers._group_actions[0].choices[command[0]]
    choices = {a.dest: tuple(a.choices) for a in sub._actions if a.choices}
    assert choices["model"] == ONLINE_MODELS and choices["optimizer"] == OPTIMIZERS
    assert choices["new_item_policy"] == NEW_ITEM_POLICIES


def test_publish_cli_defaults_are_the_publish_config_defaults():
    import dataclasses

    from streaming.serving import PublishConfig

    args = _parsed("replay", "ml-100k", "--redis-url", "redis://h:1/0")
    defaults = {f.name: f.default for f in dataclasses.fields(PublishConfig)}
    assert args.seen_per_user == defaults["seen_per_user"]
    assert (
        args.user_ttl == defaults["user_ttl_s"]
        and args.publish_every == defaults["publish_every_s"]
    )
    assert args.full_every == defaults["full_every_s"]
    assert args.delta_tolerance == defaults["delta_tolerance"]


def test_decay_unit_option_reaches_the_config():
    from engine.config import DECAY_UNITS
    from streaming.cli import _online_config

    args = _parsed("replay", "ml-100k", "--half-life", "5000", "--decay-unit", "events")
    cfg = _online_config(args)
    assert (cfg.half_life, cfg.decay_unit) == (5000.0, "events")
    sub = _parsed("replay", "ml-100k")
    assert sub.decay_unit == "events" and DECAY_UNITS == ("seconds", "events")
    with pytest.raises(SystemExit):
        _parsed("replay", "ml-100k", "--decay-unit", "days")
    assert _online_config(_parsed("replay", "ml-100k", "--half-life", "none")).half_life is None
    for bad in ("0", "-5", "inf", "soon"):
        with pytest.raises(SystemExit):
            _parsed("replay", "ml-100k", "--half-life", bad)


def test_offline_cli_defaults_are_the_config_defaults():
    from engine.config import GRAPHS, MODEL_NAMES, OfflineConfig

    args, d = _parsed("offline"), OfflineConfig()
    assert args.model == [d.model] and args.graph == [d.graph]
    assert d.optimizer in args.optimizer
    assert (args.epochs, args.eval_every, args.batch_size) == (d.epochs, d.eval_every, d.batch_size)
    assert (args.lr, args.weight_decay, args.maxlen) == (d.lr, d.weight_decay, d.maxlen)
    assert (args.beta, args.L, args.patience) == (d.sevo_beta, d.sevo_steps, d.patience)
    assert args.max_category_size == d.max_category_size and args.device == d.device
    assert args.category_weight == d.category_weight and args.seeds == [d.seed]
    from streaming.cli import build_parser

    offline = build_parser()._subparsers._group_actions[0].choices["offline"]
    choices = {a.dest: tuple(a.choices) for a in offline._actions if a.choices}
    assert choices["model"] == MODEL_NAMES and choices["graph"] == GRAPHS


def test_every_help_shows_its_defaults(capsys):
    """``--help`` of every subcommand renders and shows the defaults."""
    for argv in (["replay"], ["run"], ["offline"], ["produce"], ["recommend"], ["data", "stats"]):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "(default:" in out, argv
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    out = capsys.readouterr().out
    assert "--lr LR" in out and "(default: 0.003)" in out
