"""Bad command lines end in one line naming the problem and the fix, with exit code 2, before any work is done;
an unexpected exception still shows its traceback."""

from __future__ import annotations

import pytest

from jcircuits.cli import main

PROMPT = ["--prompt", "the capital of texas is"]


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["attribute", *PROMPT, "-o", "{tmp}"], "is a directory"),
        (["attribute", *PROMPT, "-o", "{tmp}/afile/g.safetensors"], "is a file"),
        (["attribute", *PROMPT, "--graph-dir", "{tmp}/afile"], "is a file"),
        (["attribute", *PROMPT, "--graph-dir", "{tmp}", "--slug", "../up"], "slug"),
        (["attribute", "--tokens", "1,99999999999"], "not a token id"),
        (["attribute", "--tokens", "1,-3"], "not a token id"),
        (["attribute", "--tokens", "1,x"], "comma-separated integers"),
        (["attribute", *PROMPT, "--tokens", "1,2"], "exactly one of --prompt"),
        (["attribute", "--tokens", "1,2", "--chat"], "does not apply to --tokens"),
        (["attribute", *PROMPT, "--chat", "-o", "{tmp}/g.safetensors"], "no chat template"),
        (["intervene", *PROMPT, "--chat", "--set", "0:1:2=1"], "no chat template"),
        (["attribute", *PROMPT, "--slug", "s"], "need --graph-dir"),
        (["attribute", *PROMPT, "--batch-size", "0"], "--batch-size"),
        (["attribute", *PROMPT, "--max-feature-nodes", "-5"], "--max-feature-nodes"),
        (["attribute", *PROMPT, "--desired-logit-prob", "nan"], "--desired-logit-prob"),
        (["attribute", *PROMPT, "--transcoders", "x"], "--transcoders needs --model"),
        (["attribute", *PROMPT, "--active-features", "{tmp}/missing.safetensors"], "is not a graph file"),
        (["attribute", *PROMPT, "--active-features", "{tmp}/afile"], "cannot read"),
        (["attribute", *PROMPT, "--target-position", "x"], "comma list of positions"),
        (["attribute", *PROMPT, "--target-position", "2,9"], "target position(s) [9] outside the prompt's 6 tokens"),
        (["attribute", *PROMPT, "--target-position", "2,-4"], "target positions repeat"),
        (["attribute", "--prompts-file", "{tmp}/missing.txt", "--graph-dir", "{tmp}/g"], "no such file"),
        (["attribute", "--prompts-file", "{tmp}/afile"], "needs --graph-dir"),
        (["attribute", "--prompts-file", "{tmp}/afile", "--graph-dir", "{tmp}/g", "--slug", "s"], "drop --slug"),
        (["attribute", *PROMPT, "--prompts-file", "{tmp}/afile", "--graph-dir", "{tmp}/g"], "drop --prompt"),
        (["attribute", "--prompts-file", "{tmp}/blank.txt", "--graph-dir", "{tmp}/g"], "holds no prompt"),
        (["attribute", "--prompts-file", "{tmp}/afile", "--graph-dir", "{tmp}/g", "--split", "rows"], "add --mesh"),
        (["attribute", *PROMPT, "--split", "prompts"], "--split is for --prompts-file"),
        (["attribute", *PROMPT, "--split", "layers"], "invalid choice"),
        (["attribute", *PROMPT, "--adjacency", "dense", "--top-k-edges", "5"], "--adjacency sparse"),
        (["attribute", *PROMPT, "--edge-tolerance", "1.5"], "[0, 1)"),
        (["attribute", *PROMPT, "--top-k-edges", "0"], "--top-k-edges"),
        (["attribute", *PROMPT, "--adjacency", "csr"], "--adjacency"),
        (["serve", "--graph-dir", "{tmp}", "--port", "70000"], "0 to 65535"),
        (["serve", "--graph-dir", "{tmp}", "--port", "-1"], "0 to 65535"),
        (["serve", "--graph-dir", "{tmp}/missing"], "does not exist"),
        (["render", "{tmp}/dir.json", "-o", "{tmp}/g.svg"], "is a directory, not a graph file"),
        (["render", "{tmp}/missing.json", "-o", "{tmp}/g.svg"], "no such graph file"),
        (["render", "{tmp}/dir.json", "-o", "{tmp}"], "is a directory"),
        (["render", "{tmp}/dir.json", "-o", "{tmp}/g.svg", "--width", "100000000"], "pixels"),
        (["intervene", *PROMPT], "at least one --set"),
        (["intervene", *PROMPT, "--set", "0:1:2=1", "--top-k", "0"], "--top-k"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(argv, words, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "dir.json").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, err = _run(argv, capsys)
    assert code == 2, err
    assert words in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "g.svg").exists()


def test_an_unexpected_error_keeps_its_traceback(monkeypatch, tmp_path):
    import jcircuits.commands.render as render_cmd

    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(render_cmd, "cmd_render", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["render", str(tmp_path / "g.json"), "-o", str(tmp_path / "g.svg")])
