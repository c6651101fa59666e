"""The product API is what ``runner.__all__`` says, no more, no less (as httpx's
``tests/test_exported_members.py`` keeps its own honest)."""

from __future__ import annotations

import runner


def test_all_names_every_public_member_and_nothing_else() -> None:
    import types

    public = sorted(
        name
        for name, value in vars(runner).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    )
    lazy = set(runner.__all__) - {"__version__"}
    assert set(public) <= lazy  # nothing public that is not exported (loaded ones included)
    assert sorted(dir(runner)) == sorted(runner.__all__)


def test_every_exported_name_resolves_to_what_its_module_defines() -> None:
    import importlib

    for name in runner.__all__:
        if name == "__version__":
            continue
        module = importlib.import_module(runner._EXPORTS[name])
        assert getattr(runner, name) is getattr(module, runner._ALIASES.get(name, name))


def test_no_submodule_shadows_an_exported_name() -> None:
    """Importing ``runner.render`` sets the attribute ``runner.render`` to the module: an
    exported name must never be a submodule's name."""
    import pkgutil

    submodules = {m.name for m in pkgutil.iter_modules(runner.__path__)}
    assert not submodules & set(runner.__all__)
    import importlib

    apply_module = importlib.import_module("runner.apply")
    render_module = importlib.import_module("runner.render")
    assert runner.apply_playbook is apply_module.apply
    assert runner.render_plan is render_module.render
