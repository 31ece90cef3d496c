"""An example gradsweep plugin: what a research group adds without touching gradsweep.

The entry point ``gradsweep.plugins: example = "gradsweep_example"`` names this module; gradsweep
reads its ``KINDS``. Each kind is declared next to its implementation.
"""

from gradsweep_example.sigmoid_surrogate import KIND as SIGMOID
from gradsweep_example.tanh_ste import KIND as TANH_STE

KINDS = [TANH_STE, SIGMOID]
