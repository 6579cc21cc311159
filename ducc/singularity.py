"""What Singularity/Apptainer needs in a flat root (docs/design.md §6), computed from the image config. Pure.

``additions(config)`` returns every file, directory and symlink to add; the
flat-root writer (``ducc.unpack.extend``) applies them without touching any
inode shared with the layers.

Shell quoting rules used here:

- In double quotes only ``\\ " $ ` `` are special, so a value is escaped by
  backslashing those four; newlines stay literal and survive.
- OCI_ENTRYPOINT and OCI_CMD hold lists of double-quoted words inside single
  quotes (Apptainer's format), so a single quote in a word becomes ``'\\''``.
- The user's own arguments never pass through ``eval``: the evaluated string
  refers to them as ``"$@"``, so spaces, quotes and ``$`` reach the program as typed.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

from ducc.model.manifest import ImageConfig

log = logging.getLogger(__name__)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Directories a runtime mounts over; on a read-only root they must already exist.
MOUNT_POINTS = ("cvmfs", "dev", "proc", "sys", "tmp", "var/tmp", "home", "root", "etc")
# Files a runtime bind-mounts over: present and empty in every flat root.
BIND_FILES = ("etc/hosts", "etc/resolv.conf")
SYMLINKS = {
    "singularity": ".singularity.d/runscript",
    "environment": ".singularity.d/env/90-environment.sh",
    ".run": ".singularity.d/actions/run",
    ".exec": ".singularity.d/actions/exec",
    ".shell": ".singularity.d/actions/shell",
    ".test": ".singularity.d/actions/test",
}
DIRECTORIES = (".singularity.d", ".singularity.d/actions", ".singularity.d/env", ".singularity.d/libs")


@dataclass(frozen=True)
class Additions:
    directories: tuple[str, ...]
    files: dict[str, tuple[bytes, int]]  # path -> (content, mode)
    symlinks: dict[str, str]


def double_quoted(value: str) -> str:
    """``value`` as one double-quoted shell word."""
    return '"' + re.sub(r'([\\"$`])', r"\\\1", value) + '"'


def single_quoted(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def oci_words(words: tuple[str, ...] | None) -> str:
    """A list of arguments in Apptainer's OCI_ENTRYPOINT/OCI_CMD form: double-quoted words."""
    return " ".join(double_quoted(w) for w in words or ())


def environment_script(env: tuple[str, ...]) -> str:
    """``10-docker2singularity.sh``: the image's Env, a value the user already set winning (PATH excepted)."""
    values: dict[str, str] = {}
    for entry in env:
        name, sep, value = entry.partition("=")
        if not sep or not _ENV_NAME.match(name):
            log.warning("image Env entry %r is not NAME=VALUE with a shell-safe name; left out", entry[:80])
            continue
        values.pop(name, None)  # a later assignment wins, as in Docker
        values[name] = value
    lines = ["#!/bin/sh", "# The image's Env (Docker precedence: a value the user set wins, except PATH)."]
    for name, value in values.items():
        if name == "PATH":
            lines.append(f"export PATH={double_quoted(value)}")
        else:
            lines.append(f'export {name}="${{{name}:-{double_quoted(value)}}}"')
    return "\n".join(lines) + "\n"


def runscript(config: ImageConfig) -> str:
    """``docker run`` semantics: ENTRYPOINT first; arguments replace CMD; without arguments CMD applies."""
    entrypoint = oci_words(config.entrypoint)
    cmd = oci_words(config.cmd)
    return f"""#!/bin/sh
OCI_ENTRYPOINT={single_quoted(entrypoint)}
OCI_CMD={single_quoted(cmd)}

# Arguments given to the container replace CMD; ENTRYPOINT stays in front. They are
# referred to as "$@" inside the evaluated string, so they are never re-parsed.
if [ $# -gt 0 ]; then
    SINGULARITY_OCI_RUN="-- ${{OCI_ENTRYPOINT}} \\"\\$@\\""
else
    SINGULARITY_OCI_RUN="-- ${{OCI_ENTRYPOINT}} ${{OCI_CMD}}"
fi
if [ -z "${{OCI_ENTRYPOINT}}${{OCI_CMD}}" ] && [ $# -eq 0 ]; then
    echo "this image has neither ENTRYPOINT nor CMD: give a command to run" >&2
    exit 1
fi

# Evaluate shell expressions first and set arguments accordingly,
# then execute final command as first container process
eval "set ${{SINGULARITY_OCI_RUN}}"
exec "$@"
"""


_SOURCE_ENV = """for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then
        . "$script"
    fi
done
"""

ACTIONS = {
    "exec": "#!/bin/sh\n" + _SOURCE_ENV + 'exec "$@"\n',
    "run": "#!/bin/sh\n" + _SOURCE_ENV + """if [ -x /.singularity.d/runscript ]; then
    exec /.singularity.d/runscript "$@"
fi
echo "no runscript in this image" >&2
exit 1
""",
    "shell": "#!/bin/sh\n" + _SOURCE_ENV + """if [ -n "${SINGULARITY_SHELL:-}" ] && [ -x "$SINGULARITY_SHELL" ]; then
    exec "$SINGULARITY_SHELL" "$@"
elif [ -x /bin/bash ]; then
    exec /bin/bash --norc "$@"
fi
exec /bin/sh "$@"
""",
    "start": "#!/bin/sh\n" + _SOURCE_ENV + """if [ -x /.singularity.d/startscript ]; then
    exec /.singularity.d/startscript "$@"
fi
""",
    "test": "#!/bin/sh\n" + _SOURCE_ENV + """if [ -x /.singularity.d/test ]; then
    exec /.singularity.d/test "$@"
fi
echo "no test script in this image"
""",
}

ENV_FILES = {
    "01-base.sh": "#!/bin/sh\n# Base environment of every container (nothing to set for converted images).\n",
    "90-environment.sh": "#!/bin/sh\n# Custom environment for this container (empty for converted images).\n",
    "95-apps.sh": """#!/bin/sh
# Scientific Filesystem apps, when the runtime selected one.
if [ -n "${SINGULARITY_APPNAME:-}" ] && [ -d "/scif/apps/${SINGULARITY_APPNAME}" ]; then
    SCIF_APPROOT="/scif/apps/${SINGULARITY_APPNAME}"
    export SCIF_APPROOT
    for script in "/scif/apps/${SINGULARITY_APPNAME}/scif/env/"*.sh; do
        if [ -f "$script" ]; then
            . "$script"
        fi
    done
fi
""",
    "99-base.sh": """#!/bin/sh
if [ -z "${LD_LIBRARY_PATH:-}" ]; then
    LD_LIBRARY_PATH="/.singularity.d/libs"
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi
if [ -z "${PS1:-}" ]; then
    PS1="Singularity> "
fi
export LD_LIBRARY_PATH PS1
""",
    "99-runtimevars.sh": """#!/bin/sh
# PATH changes the user asked the runtime for (SINGULARITYENV_/APPTAINERENV_ PREPEND_PATH, APPEND_PATH, PATH).
if [ -n "${SING_USER_DEFINED_PREPEND_PATH:-}" ]; then
    PATH="$SING_USER_DEFINED_PREPEND_PATH:$PATH"
fi
if [ -n "${SING_USER_DEFINED_APPEND_PATH:-}" ]; then
    PATH="$PATH:$SING_USER_DEFINED_APPEND_PATH"
fi
if [ -n "${SING_USER_DEFINED_PATH:-}" ]; then
    PATH="$SING_USER_DEFINED_PATH"
fi
unset SING_USER_DEFINED_PREPEND_PATH SING_USER_DEFINED_APPEND_PATH SING_USER_DEFINED_PATH
export PATH
""",
}


def additions(config: ImageConfig) -> Additions:
    """Everything ducc adds to a flat root for this image config."""
    files: dict[str, tuple[bytes, int]] = {}
    for name, text in ENV_FILES.items():
        files[f".singularity.d/env/{name}"] = (text.encode(), 0o755)
    files[".singularity.d/env/10-docker2singularity.sh"] = (environment_script(config.env).encode(), 0o755)
    for name, text in ACTIONS.items():
        files[f".singularity.d/actions/{name}"] = (text.encode(), 0o755)
    files[".singularity.d/runscript"] = (runscript(config).encode(), 0o755)
    files[".singularity.d/labels.json"] = ((json.dumps(dict(config.labels), indent=2, sort_keys=True) + "\n").encode(), 0o644)
    for path in BIND_FILES:
        files[path] = (b"", 0o644)
    return Additions(DIRECTORIES, files, dict(SYMLINKS))


def image_summary(config: ImageConfig) -> dict[str, object]:
    """What ``ducc inspect`` reports about the image beyond its paths."""
    return {
        "working_dir": config.working_dir,
        "user": config.user,
        "labels": dict(config.labels),
        "env": list(config.env),
        "entrypoint": list(config.entrypoint) if config.entrypoint is not None else None,
        "cmd": list(config.cmd) if config.cmd is not None else None,
    }
