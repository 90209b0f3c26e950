"""Nothing in hpeft unpickles a file: every torch.load passes weights_only=True (adapters and bases are
safetensors). Checked on the source, so a new call without it fails here before it ships."""

import ast
from pathlib import Path

import hpeft

PACKAGE = Path(hpeft.__file__).parent


def torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "torch":
                yield node


def test_every_torch_load_is_weights_only():
    calls, unsafe = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        for call in torch_load_calls(ast.parse(path.read_text(), str(path))):
            calls += 1
            flag = {k.arg: k.value for k in call.keywords}.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                unsafe.append(f"{path.relative_to(PACKAGE.parent)}:{call.lineno}")
    assert calls >= 1  # the scan sees the package's calls (hpeft/tasks/ensemble.py has one)
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"
