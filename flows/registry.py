"""The runbooks this installation has: every runbook module of this package, and the modules
``config/runbooks/*.yaml`` names (``module:``), each declaring its :class:`core.catalog.RunbookSpec`.

:func:`load_catalog` is how the service builds its catalog: it imports the runbook modules (and so
Prefect), refuses a step that would run again after an approval, and merges each spec with the
installation's overrides (:func:`core.catalog.load_catalog`, which names the file, the runbook and
the field of anything wrong).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from prefect import Flow, Task
from pydantic import ValidationError

import flows
from core.catalog import Catalog, CatalogError, Declared, RunbookSpec, read_overrides
from core.catalog import load_catalog as merge_catalog
from core.results import Resumable


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise CatalogError(f"cannot import runbook module {name!r}: {exc}") from exc
    except ValidationError as exc:  # a RunbookSpec (or thresholds model) that is wrong: name the field
        raise CatalogError("\n".join(f"runbook module {name!r}: {exc.title}.{'.'.join(str(p) for p in err['loc'])}: "
                                     f"{err['msg'].removeprefix('Value error, ')}" for err in exc.errors())) from None
    except Exception as exc:  # noqa: BLE001 - whatever a module raises while loading, said with its name
        raise CatalogError(f"runbook module {name!r} fails to load: {type(exc).__name__}: {exc}") from exc


def declared_in(module: Any) -> list[Any]:
    """The runbook flows a module declares (flows built from a :class:`RunbookSpec`), checked."""
    found = [obj for obj in vars(module).values()
             if isinstance(obj, Flow) and isinstance(getattr(obj, "spec", None), RunbookSpec)
             and obj.fn.__module__ == module.__name__]
    if found:
        for name, step in sorted(vars(module).items()):
            if isinstance(step, Task) and not isinstance(step.cache_policy, Resumable):
                raise CatalogError(
                    f"{module.__name__}: step {step.name!r} ({name}) is not resumable: a response that waited for "
                    "approval would run it again. Make it with flows.lifecycle.step(name, probe) or "
                    "@core.results.resumable(name=...) instead of @task")
    return found


def discover(modules: list[str] = ()) -> dict[str, Any]:
    """{runbook name: its Prefect flow}: this package's runbook modules, then ``modules``."""
    names = [f"flows.{info.name}" for info in pkgutil.iter_modules(flows.__path__)]
    found: dict[str, Any] = {}
    for name in [*names, *modules]:
        module = _import(name)
        declared = declared_in(module)
        if name in modules and not declared:
            raise CatalogError(f"runbook module {name!r} declares no runbook (build its flow with "
                               "flows.lifecycle.runbook_flow(SPEC, assess, Limits))")
        for made in declared:
            if made.spec.name in found and found[made.spec.name] is not made:
                raise CatalogError(f"runbook {made.spec.name!r} is declared twice: in {name} and in "
                                   f"{found[made.spec.name].fn.__module__}")
            found[made.spec.name] = made
    return found


def entrypoint(made: Any) -> str:
    return f"{made.fn.__module__}:{made.fn.__name__}"


def load_catalog(config_dir: Path) -> Catalog:
    """The catalog in force: the declared runbooks with this installation's configuration."""
    overrides = read_overrides(config_dir)
    declared = discover([override.module for _, override in overrides if override.module])
    return merge_catalog(config_dir, [Declared(spec=made.spec, flow=entrypoint(made), thresholds=made.thresholds_model)
                                      for made in declared.values()], overrides)


def flows_of(catalog: Catalog) -> dict[str, Any]:
    """{runbook name: Prefect flow} for every runbook of the catalog (their modules are imported already)."""
    found: dict[str, Any] = {}
    for runbook in catalog.runbooks:
        module, attr = runbook.flow.split(":")
        found[runbook.name] = getattr(_import(module), attr)
    return found
