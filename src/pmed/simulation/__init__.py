"""Simulation study of the project's estimators (ADEMP; Morris, White & Crowther 2019).

Aims: bias, empirical and model standard errors, 95% CI coverage and rejection rates under the
null of every estimate the stage reports print, over many data sets of the demo generator
(not one chosen draw). Data-generating mechanisms: the demo generator (:mod:`pmed.demo`),
EHR only, in the scenarios of params.yaml ``simulation.scenarios`` (heterogeneity and image
signal on / off). Estimands and their truths: :mod:`pmed.simulation.truth`. Methods: the
stage helpers the notebooks call (:mod:`pmed.simulation.estimands`). Performance measures:
:mod:`pmed.simulation.performance`. The study: :mod:`pmed.simulation.study`; its report:
:mod:`pmed.simulation.report`. Run ``python -m pmed.simulation --help``.
"""
