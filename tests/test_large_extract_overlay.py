"""The large-extract overlay (benchmarks/params_large_extract.yaml) validates and only lowers repetition counts."""

from pmed import config


def test_large_extract_overlay_validates_and_lowers_counts(monkeypatch):
    study = config.load_params()
    monkeypatch.setenv("PMED_PARAMS_OVERLAY", "benchmarks/params_large_extract.yaml")
    large = config.load_params()
    for stage, key in [("survival", "n_imputations"), ("survival", "n_bootstrap"), ("outcomes", "cv_repeats"),
                       ("treatment", "n_imputations"), ("treatment", "n_bootstrap")]:
        assert 1 <= large[stage][key] < study[stage][key]
    assert large["treatment"]["recommend"]["n_repeats"] < study["treatment"]["recommend"]["n_repeats"]
    assert large["survival"]["covariates"] == study["survival"]["covariates"]
