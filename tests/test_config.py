"""The agents file: discovery, validation errors, endpoint resolution and the small commands.

Config errors are checked through the real CLI: exit 2, nothing on stdout, and exactly one
line on stderr naming the file (and the line, where YAML knows it) and the problem.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import Result

from fanout import __version__
from fanout.config import check_credentials, load_panel
from fanout.errors import ConfigError
from tests.conftest import Invoke
from tests.fakeserver import FakeOpenAI

WriteYaml = Callable[..., Path]

# One valid persona, for files whose point is elsewhere.
MINIMAL = """
agents:
  - name: solo
"""


@pytest.fixture
def write_yaml(tmp_path: Path) -> WriteYaml:
    """Write raw YAML text (dedented, first newline dropped) so line numbers mean something."""

    def write(text: str, name: str = "panel.yaml") -> Path:
        path = tmp_path / "configs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).removeprefix("\n"), encoding="utf-8")
        return path

    return write


def run_with_config(invoke: Invoke, command: str, config: Path) -> Result:
    """``fanout agents -c FILE`` or ``fanout ask -c FILE "q"``."""
    if command == "ask":
        return invoke("ask", "-c", config, "What is temperature?")
    return invoke("agents", "-c", config)


def assert_config_error(result: Result, source: Path | str, *fragments: str) -> str:
    """Exit 2, empty stdout, one stderr line naming ``source`` (the file, or the agent) and
    every fragment; no traceback. Returns the line."""
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == ""
    message = result.stderr
    assert message.count("\n") == 1 and message.endswith("\n"), message
    assert message.startswith("fanout: error: "), message
    assert str(source) in message
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback" not in result.stdout + result.stderr
    return message


def agents_json(invoke: Invoke, *args: str | Path) -> dict[str, Any]:
    result = invoke("agents", "--json", *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    document: dict[str, Any] = json.loads(result.stdout)
    return document


# --- unknown keys -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["agents", "ask"])
def test_typo_in_an_agent_names_key_suggests_model_and_gives_line(
    write_yaml: WriteYaml, invoke: Invoke, command: str
) -> None:
    config = write_yaml(
        """
        defaults:
          temperature: 0.5

        agents:
          - name: physicist
            description: energy and forces
          - name: chemist
            modle: gpt-4o
        """
    )
    result = run_with_config(invoke, command, config)
    assert_config_error(
        result, config, f"{config}:8:", "'modle'", "did you mean 'model'?", "chemist"
    )


def test_unknown_top_level_key(write_yaml: WriteYaml, invoke: Invoke) -> None:
    config = write_yaml(
        """
        agents:
          - name: solo
        synthesiser:
          model: gpt-4o
        """
    )
    result = invoke("agents", "-c", config)
    assert_config_error(
        result, config, f"{config}:3:", "unknown key 'synthesiser'", "did you mean 'synthesizer'?"
    )


def test_unknown_key_in_defaults(write_yaml: WriteYaml, invoke: Invoke) -> None:
    config = write_yaml(
        """
        defaults:
          model: gpt-4o-mini
          temprature: 0.2
        agents:
          - name: solo
        """
    )
    result = invoke("agents", "-c", config)
    assert_config_error(
        result,
        config,
        f"{config}:3:",
        "defaults",
        "unknown key 'temprature'",
        "did you mean 'temperature'?",
    )


def test_unknown_key_in_synthesizer(write_yaml: WriteYaml, invoke: Invoke) -> None:
    config = write_yaml(
        """
        agents:
          - name: solo
        synthesizer:
          instructions: Merge.
          modle: gpt-4o
        """
    )
    result = invoke("agents", "-c", config)
    assert_config_error(
        result,
        config,
        f"{config}:5:",
        "synthesizer",
        "unknown key 'modle'",
        "did you mean 'model'?",
    )


# --- wrong types and values -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ("temperature: hot", ("temperature", "valid number", "'hot'")),
        ("temperature: '0.5'", ("temperature", "valid number", "'0.5'")),
        ("max_tokens: 1.5", ("max_tokens", "valid integer", "1.5")),
        ("max_tokens: lots", ("max_tokens", "valid integer", "'lots'")),
        ("temperature: 3.0", ("temperature", "less than or equal to 2", "3.0")),
    ],
    ids=["temp-word", "temp-str", "tokens-float", "tokens-str", "temp-too-high"],
)
def test_wrong_field_value_is_reported_with_its_line(
    write_yaml: WriteYaml, invoke: Invoke, line: str, fragments: tuple[str, ...]
) -> None:
    config = write_yaml(f"agents:\n  - name: solo\n    {line}\n")
    result = invoke("agents", "-c", config)
    assert_config_error(result, config, f"{config}:3:", "agents[0] (solo)", *fragments)


def test_name_as_a_number(write_yaml: WriteYaml, invoke: Invoke) -> None:
    config = write_yaml(
        """
        agents:
          - name: solo
          - name: 42
        """
    )
    result = invoke("agents", "-c", config)
    assert_config_error(result, config, f"{config}:3:", "agents[1].name", "valid string", "42")


@pytest.mark.parametrize("command", ["agents", "ask"])
def test_agents_as_a_mapping_instead_of_a_list(
    write_yaml: WriteYaml, invoke: Invoke, command: str
) -> None:
    config = write_yaml(
        """
        agents:
          physicist:
            model: gpt-4o
        """
    )
    result = run_with_config(invoke, command, config)
    assert_config_error(result, config, f"{config}:1:", "agents", "expected a list")


# --- the panel itself -------------------------------------------------------------------------


def test_duplicate_agent_names(write_yaml: WriteYaml, invoke: Invoke) -> None:
    config = write_yaml(
        """
        agents:
          - name: physicist
          - name: chemist
          - name: physicist
        """
    )
    result = invoke("agents", "-c", config)
    assert_config_error(result, config, "duplicate agent name 'physicist'")


def test_duplicate_agent_name_error_points_at_the_duplicate(
    write_yaml: WriteYaml, invoke: Invoke
) -> None:
    config = write_yaml(
        """
        # my panel
        defaults:
          model: gpt-4o-mini
        agents:
          - name: physicist
          - name: chemist
          - name: physicist
        """
    )
    result = invoke("agents", "-c", config)
    assert_config_error(result, config, f"{config}:7:", "duplicate agent name 'physicist'")


@pytest.mark.parametrize("command", ["agents", "ask"])
def test_empty_panel(write_yaml: WriteYaml, invoke: Invoke, command: str) -> None:
    config = write_yaml("agents: []\n")
    result = run_with_config(invoke, command, config)
    assert_config_error(result, config, f"{config}:1:", "agents", "at least one persona")


def test_missing_agents_key(write_yaml: WriteYaml, invoke: Invoke) -> None:
    config = write_yaml(
        """
        defaults:
          model: gpt-4o-mini
        """
    )
    result = invoke("agents", "-c", config)
    assert_config_error(result, config, "agents: required key is missing")


def test_agent_without_a_name(write_yaml: WriteYaml, invoke: Invoke) -> None:
    config = write_yaml(
        """
        agents:
          - name: physicist
          - model: gpt-4o
            description: nameless
        """
    )
    result = invoke("agents", "-c", config)
    assert_config_error(result, config, f"{config}:3:", "agents[1].name", "required key is missing")


# --- files that are not an agents file --------------------------------------------------------


@pytest.mark.parametrize("command", ["agents", "ask"])
def test_yaml_syntax_error_gives_the_line(
    write_yaml: WriteYaml, invoke: Invoke, command: str
) -> None:
    config = write_yaml(
        """
        agents:
          - name: physicist
           model: gpt-4o
        """
    )
    result = run_with_config(invoke, command, config)
    assert_config_error(result, config, f"{config}:3:", "invalid YAML")


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- name: physicist\n- name: chemist\n", "a list"), ("just a sentence\n", "a string")],
    ids=["list", "scalar"],
)
def test_top_level_must_be_a_mapping(
    write_yaml: WriteYaml, invoke: Invoke, text: str, kind: str
) -> None:
    config = write_yaml(text)
    result = invoke("agents", "-c", config)
    assert_config_error(result, config, "expected a mapping with an 'agents:' list", f"got {kind}")


@pytest.mark.parametrize(
    "text", ["", "\n\n", "# nothing but a comment\n"], ids=["zero-bytes", "blank", "comment"]
)
def test_empty_file(write_yaml: WriteYaml, invoke: Invoke, text: str) -> None:
    config = write_yaml(text)
    result = invoke("agents", "-c", config)
    assert_config_error(result, config, "the file is empty")


@pytest.mark.parametrize("command", ["agents", "ask"])
def test_binary_file(tmp_path: Path, invoke: Invoke, command: str) -> None:
    config = tmp_path / "panel.yaml"
    config.write_bytes(b"agents:\x00\x01\x02\xff\x00")
    result = run_with_config(invoke, command, config)
    assert_config_error(result, config, "not a text file")


def test_non_utf8_file(tmp_path: Path, invoke: Invoke) -> None:
    config = tmp_path / "panel.yaml"
    config.write_bytes("agents:\n  - name: caf\xe9\n".encode("latin-1"))
    result = invoke("agents", "-c", config)
    assert_config_error(result, config, "not UTF-8")


@pytest.mark.parametrize("command", ["agents", "ask"])
def test_missing_file(tmp_path: Path, invoke: Invoke, command: str) -> None:
    config = tmp_path / "nope.yaml"
    result = run_with_config(invoke, command, config)
    assert_config_error(result, config, "no such file")


@pytest.mark.parametrize("command", ["agents", "ask"])
def test_directory_as_config(tmp_path: Path, invoke: Invoke, command: str) -> None:
    result = run_with_config(invoke, command, tmp_path)
    assert_config_error(result, tmp_path, "is a directory")


def test_missing_file_from_the_environment(
    tmp_path: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gone.yaml"
    monkeypatch.setenv("FANOUT_CONFIG", str(config))
    result = invoke("agents")
    assert_config_error(result, config, "no such file")


# --- YAML is loaded safely --------------------------------------------------------------------


@pytest.mark.parametrize("command", ["agents", "ask"])
def test_python_object_tag_is_rejected_and_never_run(
    write_yaml: WriteYaml, invoke: Invoke, tmp_path: Path, command: str
) -> None:
    marker = tmp_path / "SOMEFILE"
    config = write_yaml(f'agents: !!python/object/apply:os.system ["touch {marker}"]\n')
    result = run_with_config(invoke, command, config)
    assert_config_error(result, config, f"{config}:1:", "invalid YAML")
    assert not marker.exists()
    assert not (Path.cwd() / "SOMEFILE").exists()


def test_python_name_tag_is_rejected(write_yaml: WriteYaml, invoke: Invoke) -> None:
    config = write_yaml(
        """
        agents:
          - name: !!python/name:os.system
        """
    )
    result = invoke("agents", "-c", config)
    assert_config_error(result, config, f"{config}:2:", "invalid YAML", "python/name")


# --- edge cases found while writing these tests ------------------------------------------------


@pytest.mark.parametrize("key", ["yes", "1"])
def test_non_string_top_level_key_is_a_config_error(
    write_yaml: WriteYaml, invoke: Invoke, key: str
) -> None:
    config = write_yaml(f"agents:\n  - name: solo\n{key}: oops\n")
    result = invoke("agents", "-c", config)
    assert_config_error(result, config)


@pytest.mark.parametrize(
    "text",
    ['agents:\n  - name: "a\\nb"\n', 'agents:\n  - name: solo\n    "mo\\ndle": x\n'],
    ids=["name", "key"],
)
def test_newline_in_a_name_or_key_keeps_the_error_on_one_line(
    write_yaml: WriteYaml, invoke: Invoke, text: str
) -> None:
    config = write_yaml(text)
    result = invoke("agents", "-c", config)
    assert_config_error(result, config)


@pytest.mark.parametrize(
    "text",
    ["agents:\n  - physicist\n", "defaults:\nagents:\n  - name: solo\n"],
    ids=["scalar-agent", "empty-defaults"],
)
def test_errors_do_not_name_internal_classes(
    write_yaml: WriteYaml, invoke: Invoke, text: str
) -> None:
    result = invoke("agents", "-c", write_yaml(text))
    assert "AgentSpec" not in result.stderr
    assert "_AgentFields" not in result.stderr


# --- discovery --------------------------------------------------------------------------------

SOURCES = ["flag", "env", "cwd", "xdg", "default"]


@pytest.mark.parametrize("winner", SOURCES)
def test_discovery_order(
    winner: str,
    invoke: Invoke,
    tmp_path: Path,
    isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The winner is present along with every lower-priority source, and it is the one used."""
    present = SOURCES[SOURCES.index(winner) :]

    def panel(path: Path, name: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"agents:\n  - name: from-{name}\n", encoding="utf-8")
        return path

    paths = {
        "flag": tmp_path / "flag" / "panel.yaml",
        "env": tmp_path / "env" / "panel.yaml",
        "cwd": isolated_env / "agents.yaml",
        "xdg": tmp_path / "xdg-config" / "fanout" / "agents.yaml",
    }
    for source in present:
        if source in paths:
            panel(paths[source], source)
    if "env" in present:
        monkeypatch.setenv("FANOUT_CONFIG", str(paths["env"]))
    args: list[str | Path] = ["-c", paths["flag"]] if "flag" in present else []

    document = agents_json(invoke, *args)

    names = [a["name"] for a in document["agents"]]
    if winner == "default":
        assert document["source"] == "<default panel>"
        assert {"physicist", "chemist"} <= set(names)
    else:
        assert names == [f"from-{winner}"]
        assert Path(document["source"]).resolve() == paths[winner].resolve()


def test_empty_fanout_config_variable_is_ignored(
    invoke: Invoke, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (isolated_env / "agents.yaml").write_text("agents:\n  - name: local\n", encoding="utf-8")
    monkeypatch.setenv("FANOUT_CONFIG", "")
    document = agents_json(invoke)
    assert [a["name"] for a in document["agents"]] == ["local"]


# --- endpoints and keys -----------------------------------------------------------------------


def test_base_url_persona_beats_defaults_beats_environment(
    write_yaml: WriteYaml, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "https://env.example/v1")
    config = write_yaml(
        """
        defaults:
          base_url: https://defaults.example/v1
        agents:
          - name: own
            base_url: http://localhost:11434/v1/
          - name: inherits
        """
    )
    document = agents_json(invoke, "-c", config)
    by_name = {a["name"]: a for a in document["agents"]}
    assert by_name["own"]["base_url"] == "http://localhost:11434/v1"  # trailing slash dropped
    assert by_name["own"]["host"] == "localhost"
    assert by_name["inherits"]["base_url"] == "https://defaults.example/v1"
    assert by_name["inherits"]["host"] == "defaults.example"
    assert document["synthesizer"]["base_url"] == "https://defaults.example/v1"


def test_base_url_environment_beats_the_openai_default(
    write_yaml: WriteYaml, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "https://env.example/v1")
    document = agents_json(invoke, "-c", write_yaml(MINIMAL))
    assert document["agents"][0]["base_url"] == "https://env.example/v1"
    assert document["synthesizer"]["base_url"] == "https://env.example/v1"


def test_base_url_falls_back_to_openai(write_yaml: WriteYaml, invoke: Invoke) -> None:
    document = agents_json(invoke, "-c", write_yaml(MINIMAL))
    assert document["agents"][0]["base_url"] == "https://api.openai.com/v1"
    assert document["agents"][0]["host"] == "api.openai.com"


def test_remote_endpoint_without_a_key_names_openai_api_key(
    write_yaml: WriteYaml, invoke: Invoke
) -> None:
    config = write_yaml(
        """
        agents:
          - name: solo
            base_url: https://api.example.invalid/v1
        """
    )
    result = invoke("ask", "-c", config, "Why?")
    message = assert_config_error(result, "solo", "$OPENAI_API_KEY", "api.example.invalid")
    assert "MY_KEY" not in message


def test_persona_api_key_env_is_the_one_checked(
    write_yaml: WriteYaml, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OPENAI_API_KEY is set, but the persona asks for MY_KEY: no silent fallback.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    config = write_yaml(
        """
        agents:
          - name: solo
            base_url: https://api.example.invalid/v1
            api_key_env: MY_KEY
        """
    )
    result = invoke("ask", "-c", config, "Why?")
    assert_config_error(result, "solo", "$MY_KEY", "api.example.invalid")


def test_credentials_check_passes_with_the_persona_key_set(write_yaml: WriteYaml) -> None:
    # Unit level, so no request can go out to the (remote) endpoint.
    config = write_yaml(
        """
        agents:
          - name: solo
            base_url: https://api.example.invalid/v1
            api_key_env: MY_KEY
        """
    )
    panel = load_panel(config, environ={})
    assert panel.agents[0].endpoint.api_key_env == "MY_KEY"
    check_credentials(panel.agents, {"MY_KEY": "sk-mine"})
    with pytest.raises(ConfigError, match=r"\$MY_KEY"):
        check_credentials(panel.agents, {"OPENAI_API_KEY": "sk-other"})


def test_persona_key_is_sent_to_a_local_endpoint(
    server: FakeOpenAI, write_yaml: WriteYaml, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_KEY", "sk-persona-key")
    monkeypatch.setenv("DEFAULT_KEY", "sk-defaults-key")
    config = write_yaml(
        f"""
        defaults:
          base_url: {server.base_url}
          api_key_env: DEFAULT_KEY
        agents:
          - name: solo
            model: m-solo
            api_key_env: MY_KEY
        """
    )
    result = invoke("ask", "-c", config, "--json", "Why?")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert server.requests[0].headers["authorization"] == "Bearer sk-persona-key"


# --- fanout agents ----------------------------------------------------------------------------

PANEL = """
defaults:
  model: m-default
  base_url: http://127.0.0.1:9/v1
agents:
  - name: physicist
    description: energy and forces
  - name: chemist
    model: m-chem
    description: bonds
synthesizer:
  name: moderator
  model: m-synth
"""


def test_agents_table_lists_every_persona_and_the_synthesizer(
    write_yaml: WriteYaml, invoke: Invoke
) -> None:
    result = invoke("agents", "-c", write_yaml(PANEL))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    for text in ("physicist", "chemist", "moderator", "m-default", "m-chem", "m-synth", "bonds"):
        assert text in result.stdout
    assert "127.0.0.1" in result.stdout


def test_agents_table_for_the_default_panel(invoke: Invoke) -> None:
    result = invoke("agents")
    assert result.exit_code == 0, result.stderr
    assert "<default panel>" in result.stdout
    for name in ("physicist", "chemist", "biologist", "synthesizer"):
        assert name in result.stdout


def test_agents_json_document(write_yaml: WriteYaml, invoke: Invoke) -> None:
    config = write_yaml(PANEL)
    result = invoke("agents", "-c", config, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    document = json.loads(result.stdout)
    assert set(document) == {"source", "agents", "synthesizer"}
    assert document["source"] == str(config)
    assert document["agents"] == [
        {
            "name": "physicist",
            "model": "m-default",
            "base_url": "http://127.0.0.1:9/v1",
            "host": "127.0.0.1",
            "description": "energy and forces",
        },
        {
            "name": "chemist",
            "model": "m-chem",
            "base_url": "http://127.0.0.1:9/v1",
            "host": "127.0.0.1",
            "description": "bonds",
        },
    ]
    synthesizer = document["synthesizer"]
    assert set(synthesizer) == {"name", "model", "base_url", "host", "description"}
    assert (synthesizer["name"], synthesizer["model"]) == ("moderator", "m-synth")


def test_agents_json_for_the_default_panel(invoke: Invoke) -> None:
    document = agents_json(invoke)
    assert document["source"] == "<default panel>"
    names = [a["name"] for a in document["agents"]]
    assert names[:2] == ["physicist", "chemist"]
    assert all(a["model"] and a["description"] for a in document["agents"])
    assert document["synthesizer"]["name"] == "synthesizer"


# --- version and help -------------------------------------------------------------------------


def test_version(invoke: Invoke) -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"fanout {__version__}\n"
    assert result.stdout.startswith("fanout 0.")


def test_version_through_python_dash_m() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "fanout", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == f"fanout {__version__}\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ask", "--help"], ["fanout ask", "Examples", "--agents", "--json", "--config"]),
        (["agents", "--help"], ["fanout agents", "Example", "--json", "--config"]),
        (["--help"], ["ask", "agents", "--version"]),
    ],
    ids=["ask", "agents", "root"],
)
def test_help_exits_0_and_documents_the_command(
    invoke: Invoke, args: list[str], expected: list[str]
) -> None:
    result = invoke(*args)
    assert result.exit_code == 0
    for text in expected:
        assert text in result.stdout


def test_root_help_shows_an_example(invoke: Invoke) -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout
    assert "fanout ask" in result.stdout


# --- unit level -------------------------------------------------------------------------------


def test_load_panel_applies_defaults_and_persona_overrides(write_yaml: WriteYaml) -> None:
    config = write_yaml(
        """
        defaults:
          model: m-default
          temperature: 0.3
          instructions: Be brief.
        agents:
          - name: plain
          - name: custom
            model: m-custom
            temperature: 1.5
            instructions: Be thorough.
        """
    )
    panel = load_panel(config, environ={})
    assert panel.source == str(config)
    plain, custom = panel.agents
    assert (plain.name, plain.model, plain.temperature) == ("plain", "m-default", 0.3)
    assert plain.instructions == "Be brief."
    assert (custom.name, custom.model, custom.temperature) == ("custom", "m-custom", 1.5)
    assert custom.instructions == "Be thorough."
    assert plain.endpoint.api_key_env == "OPENAI_API_KEY"
    assert plain.endpoint.base_url == "https://api.openai.com/v1"
    # The synthesizer inherits the defaults' model but not the personas' instructions.
    assert panel.synthesizer.name == "synthesizer"
    assert panel.synthesizer.model == "m-default"
    assert panel.synthesizer.instructions != "Be brief."
    assert panel.synthesizer.instructions


def test_load_panel_without_a_path_is_the_shipped_panel() -> None:
    panel = load_panel(None, environ={})
    assert panel.source == "<default panel>"
    assert {"physicist", "chemist"} <= {a.name for a in panel.agents}


def test_load_panel_error_is_a_config_error(write_yaml: WriteYaml) -> None:
    config = write_yaml("agents:\n  - name: solo\n    modle: x\n")
    with pytest.raises(ConfigError, match=r"panel\.yaml:3: .*did you mean 'model'\?"):
        load_panel(config, environ={})


def test_select_keeps_the_given_order(write_yaml: WriteYaml) -> None:
    panel = load_panel(write_yaml("agents:\n  - name: a\n  - name: b\n  - name: c\n"), environ={})
    assert [a.name for a in panel.select(["c", "a"])] == ["c", "a"]
    assert [a.name for a in panel.select(["b", "a", "b"])] == ["b", "a"]
    assert [a.name for a in panel.select(None)] == ["a", "b", "c"]
    assert [a.name for a in panel.select([])] == ["a", "b", "c"]


def test_select_unknown_name_suggests_the_closest(write_yaml: WriteYaml) -> None:
    panel = load_panel(write_yaml("agents:\n  - name: physicist\n  - name: chemist\n"), environ={})
    with pytest.raises(ConfigError, match=r"unknown agent 'chemst' \(did you mean 'chemist'\?\)"):
        panel.select(["physicist", "chemst"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [("http://[oops/v1", "not a usable URL"), ("http://localhost:99999/v1", "not a usable URL")],
)
def test_unusable_base_urls_are_config_errors(
    write_yaml: WriteYaml, invoke: Invoke, value: str, expected: str
) -> None:
    config = write_yaml(f'agents:\n  - name: a\n    base_url: "{value}"\n')
    result = invoke("agents", "-c", config)
    assert_config_error(result, config, expected)


def test_a_key_written_twice_is_an_error(write_yaml: WriteYaml, invoke: Invoke) -> None:
    config = write_yaml("agents:\n  - name: a\n    model: x\n    model: y\n")
    result = invoke("agents", "-c", config)
    assert_config_error(result, config, f"{config}:4:", "'model' appears twice")


def test_huge_rate_limits_are_refused(write_yaml: WriteYaml, invoke: Invoke) -> None:
    config = write_yaml("agents:\n  - name: a\n    rpm: 1.0e+300\n")
    assert_config_error(invoke("agents", "-c", config), config, "rpm")


def test_markup_in_user_text_is_shown_as_written(write_yaml: WriteYaml, invoke: Invoke) -> None:
    config = write_yaml(
        "agents:\n  - name: a\n    description: 'Cites [citation needed] and [/] [bold]x'\n"
    )
    result = invoke("agents", "-c", config)
    assert result.exit_code == 0, result.output
    assert "Cites [citation needed] and [/] [bold]x" in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("https://user:pw-SECRET@proxy.example/v1", "pw-SECRET"),
        ("https://proxy.example/v1?api-key=SECRET", "SECRET"),
        ("https://sk-SECRET@proxy.example/v1?api-key=zzz", "sk-SECRET"),
    ],
    ids=["userinfo", "query", "both"],
)
def test_credentials_in_base_url_are_refused_without_being_printed(
    write_yaml: WriteYaml, invoke: Invoke, url: str, secret: str
) -> None:
    config = write_yaml(f"agents:\n  - name: a\n    base_url: '{url}'\n")
    result = invoke("agents", "-c", config, "--json")
    message = assert_config_error(result, config, "base_url", "api_key_env", "***")
    assert secret not in message and "zzz" not in message


def counted_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A list that grows by one for every YAML loader made, libyaml's or PyYAML's own."""
    made: list[str] = []
    original = yaml.resolver.BaseResolver.__init__

    def counting(self: yaml.resolver.BaseResolver) -> None:
        made.append(type(self).__name__)
        original(self)

    monkeypatch.setattr(yaml.resolver.BaseResolver, "__init__", counting)
    return made


def test_a_large_agents_file_is_read_in_one_parse_without_the_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loading 20,000 personas took 13.6 s: PyYAML's pure-Python parser, and the cycle
    # collector walking the growing heap over and over (none of it garbage).
    agents = [{"name": f"p{i}", "model": "m", "description": f"persona {i}"} for i in range(3000)]
    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump({"agents": agents}), encoding="utf-8")
    parses = counted_parses(monkeypatch)
    collections: list[int] = []

    def collected(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(collected)
    try:
        panel = load_panel(path)
    finally:
        gc.callbacks.remove(collected)
    assert [a.name for a in panel.agents][-1] == "p2999"
    assert len(parses) == 1
    if yaml.__with_libyaml__:
        assert parses == ["_FastLoader"]
    assert len(collections) <= 1  # the one owed once it is on again (it ran hundreds of times)
    assert gc.isenabled()


def test_a_role_named_null_keeps_its_own_name(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(
        "agents:\n  - name: a\n    model: m\nsynthesizer:\n  name: null\njudge:\n  name: null\n",
        encoding="utf-8",
    )
    panel = load_panel(path)
    assert panel.synthesizer.name == "synthesizer"
    assert panel.judge is not None and panel.judge.name == "judge"
