"""Runs inside the action's process: load the file, call run(**parameters), save the result.

Kept free of Django so an action starts fast and sees none of the server's settings.
"""

import importlib.util
import inspect
import json
import logging
import os
import sys
import traceback


def _find_run(module):
    run = getattr(module, "run", None)
    if callable(run) and not inspect.isclass(run):
        return run
    for obj in vars(module).values():
        if (
            inspect.isclass(obj)
            and obj.__module__ == module.__name__
            and callable(getattr(obj, "run", None))
        ):
            return obj().run
    raise AttributeError("the action file has no run() function and no class with run()")


def main() -> int:
    path = sys.argv[1]
    result_path = os.environ.pop("TAILGATE_RESULT_PATH")
    parameters = json.loads(sys.stdin.read() or "{}")
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        spec = importlib.util.spec_from_file_location("tailgate_action", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path} as Python")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        result = _find_run(module)(**parameters)
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    with open(result_path, "w") as out:
        json.dump(result, out, default=repr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
