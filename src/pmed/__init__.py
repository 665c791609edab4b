"""pmed: reproducible personalised-medicine research from OMOP CDM EHR and medical imaging."""

__version__ = "0.1.0"
