"""The command line: `parser` holds every verb's arguments as data and builds the argparse parser, `commands` holds
one handler per verb that calls a library function and maps its errors to one line and an exit code, and `launch`
re-runs `train --nproc N` through `accelerate launch`. It may import every other package of loraclf, but holds no
logic of its own. At import it loads only the config and the base, never torch, so `loraclf --help`, `config` and
`validate` start fast; each verb imports its library module when it runs.
"""

from .commands import main  # noqa: F401
from .parser import COMMANDS, build_parser  # noqa: F401
