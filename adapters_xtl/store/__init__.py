"""Where task modules live: the local registry, its cache and checks, and their way to the Hub.

Imports point one way (each module imports only those below it)::

    sharing                      push / pull / import from the Hub: composes everything below
    verify                       `xtl registry verify [--fix]` (modules, index, links, leftovers)
    exports                      `xtl registry export`: marked folders, records of running exports
    repo                         the folder a module becomes on the Hub (push stages it, export
                                 --format hub writes it)
    native, cardfacts            a pushed repo's peft / adapters root; what its card says of data
    convert                      registry module <-> peft / adapters folder
    registry                     read / write / lock; stubs completed through a `remote.Remote`
    index, weights, interop      index.json cache; safetensors (and the pickle refusal); the formats
    card                         model cards (every quoted value escaped for where it lands)
    layout                       file names, safe names, symlink checks, version order
    manifest                     what a module is
    hub, remote                  Hub transport (huggingface_hub only, size-capped); the registry's seam
    files                        large files moved in by hash, with the user's umask
    adapters_xtl.io, .errors

The registry never imports the Hub: this package installs the Hub transport as the default
`Remote` that completes lazily pulled modules, so `Registry(...)` works wherever it is imported
from, and `Registry(remote=...)` can replace it.
"""

from __future__ import annotations

from . import hub as _hub
from . import remote as _remote

_remote.set_default_remote(_remote.Remote(check_pin=_hub.check_pin, download=_hub.download_files))
