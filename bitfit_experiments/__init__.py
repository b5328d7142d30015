"""bitfit-glue: the GLUE experiments of BitFit (Ben Zaken, Ravfogel, Goldberg; ACL 2022), faithful and fast."""

__version__ = "0.1.0"
