"""CT imaging: DICOM/NIfTI reading, radiomics features, stability and tumour response.

Modules
-------
io         read DICOM CT series / NIfTI volumes and masks, geometry checks
radiomics  pyradiomics feature extraction and the pyradiomics -> IBSI name table
stability  perturbation (erosion/dilation, noise, translation) and ICC(3,1)
response   longest axial diameter, delta-radiomics and RECIST-like response categories
extract    the parallel, cached driver the imaging feature stage calls
"""
