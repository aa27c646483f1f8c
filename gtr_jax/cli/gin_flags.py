"""gin on the command line: `--gin_file`, `--gin_search_paths` and `--gin.NAME=VALUE`, t5x-style.

`parse_gin` loads the files and bindings; `run_configured` calls a gin-configured
function. Between them they are the one place where gin's errors (a file or include not
found, a malformed binding, a `%gin.REQUIRED` macro or argument left unset) become a
one-line UserError.
"""

import logging
import os

from gtr_jax.errors import UserError

# Macros whose values are paths or names: a bare value is taken as a string.
STRING_MACROS = ("MODEL_DIR", "INIT_CHECKPOINT", "MIXTURE_OR_TASK_NAME", "VOCABULARY", "NEGATIVES_FILE")
# The shipped gin files: inside the package when installed from a wheel or `pip install .`
# (setup.py copies them there), else the checkout's top-level gin/ (an editable install).
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INSTALLED_GIN_DIR = os.path.join(_PACKAGE_DIR, "gin")
GIN_DIR = _INSTALLED_GIN_DIR if os.path.isdir(_INSTALLED_GIN_DIR) else os.path.join(os.path.dirname(_PACKAGE_DIR), "gin")
EPILOG = "Any --gin.NAME=VALUE adds a gin binding, e.g. {}."


def add_gin_arguments(parser, *, file_help: str, required: bool, example: str):
    """`--gin_file` and `--gin_search_paths` on a subcommand, and its epilog on `--gin.NAME=VALUE`."""
    parser.add_argument("--gin_file", action="append", default=[], required=required, help=file_help)
    parser.add_argument("--gin_search_paths", action="append", default=[], help="extra directories for gin includes")
    parser.epilog = EPILOG.format(example)


def gin_binding(name: str, value: str) -> str:
    """A gin binding `name = value`; a bare string for path-like macros is quoted for the user."""
    if (name in STRING_MACROS or name.endswith("_DIR")) and value[:1] not in ("'", '"', "%", "@") and value != "None":
        value = repr(value)
    return f"{name} = {value}"


def split_gin_flags(argv) -> tuple[list[str], list[str]]:
    """(other args, bindings) with every `--gin.NAME=VALUE` turned into a binding."""
    rest, bindings = [], []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin."):].split("=", 1)
            bindings.append(gin_binding(name, value))
        else:
            rest.append(arg)
    return rest, bindings


def parse_gin(gin_files, gin_bindings, search_paths):
    """Load gin files and `--gin.NAME=VALUE` bindings, turning gin's errors into one line."""
    import gin

    # Importing registers every configurable a gin file may name.
    from gtr_jax.model import dual_encoder, t5  # noqa: F401
    from gtr_jax import losses  # noqa: F401
    from gtr_jax.train import optim, partitioning, trainer  # noqa: F401
    from gtr_jax.data import vocab  # noqa: F401

    for path in [GIN_DIR, *search_paths]:
        gin.add_config_file_search_path(path)
    root_logger = logging.getLogger()
    level = root_logger.level
    # gin logs an error for every search path an include is not found under, even when a
    # later one has it; a file found nowhere still raises below.
    root_logger.setLevel(logging.CRITICAL)
    try:
        gin.parse_config_files_and_bindings(gin_files, gin_bindings)
    except (OSError, ValueError, SyntaxError) as error:
        raise UserError(f"gin: {str(error).strip().splitlines()[0]}") from None
    except ImportError as error:
        raise UserError(f"gin: a gin file imports a module that does not exist ({error})") from None
    finally:
        root_logger.setLevel(level)


def run_configured(function, *args, **kwargs):
    """`function(*args, **kwargs)`, a gin-configured call; an unset required binding is a UserError."""
    try:
        return function(*args, **kwargs)
    except RuntimeError as error:
        # gin reports a required argument left unbound as a RuntimeError when the configurable is called.
        if "Required bindings" in str(error) or "REQUIRED" in str(error):
            raise UserError(f"gin: {str(error).splitlines()[0]}") from None
        raise
