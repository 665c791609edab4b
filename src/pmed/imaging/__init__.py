"""CT and MR imaging: DICOM/NIfTI reading, radiomics features, stability and tumour response.

Modules
-------
io         read DICOM CT/MR series / NIfTI volumes and masks, geometry checks
masks      tumour masks from NIfTI, DICOM SEG and RTSTRUCT on the image grid
selection  series selection rules on DICOM headers, with a report
preprocess MR intensity preprocessing: N4 bias-field correction, z-score normalisation
micdm      features as OMOP MI-CDM image_feature + measurement rows
stage      the imaging feature stage per modality (CT; MR apart, never pooled)
radiomics  pyradiomics feature extraction and the pyradiomics -> IBSI name table
stability  perturbation (erosion/dilation, noise, translation) and ICC(3,1)
response   longest axial diameter, delta-radiomics and RECIST-like response categories
extract    the parallel, cached driver the imaging feature stage calls
"""
