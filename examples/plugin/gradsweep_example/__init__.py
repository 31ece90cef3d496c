"""An example gradsweep plugin: what a research group adds without touching gradsweep.

The entry point ``gradsweep.plugins: example = "gradsweep_example"`` names this module; gradsweep
reads its ``KINDS``. Each kind is declared next to its implementation.
"""

from gradsweep_example.gaussian_surrogate import KIND as GAUSSIAN
from gradsweep_example.tanh_ste import KIND as TANH_STE
from gradsweep_example.tiny_bnn import KIND as TINY_BNN

KINDS = [TANH_STE, GAUSSIAN, TINY_BNN]
