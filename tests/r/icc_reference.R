# Dev-only: writes the R reference ICCs and 95% CIs that tests/test_imaging_stability.py
# compares pmed.imaging.stability.icc / icc_ci with.
# Run from the repository root:  Rscript tests/r/icc_reference.R
# Needs R >= 4 with the package psych (Debian: r-cran-psych).
# Tests never run R; they read the CSVs this script writes to tests/data/r_reference/icc/.
suppressPackageStartupMessages(library(psych))
out <- "tests/data/r_reference/icc"
dir.create(out, showWarnings = FALSE, recursive = TRUE)

# Data sets: (1) Shrout & Fleiss (1979) Table 2, 6 targets x 4 judges;
# (2)-(4) simulated targets x raters with a target effect, a rater offset and error, of the
# sizes the imaging stage uses (30 images x 5 perturbations; 10 x 5 at CI size) and a low-ICC case.
sf <- matrix(c(9, 6, 8, 7, 10, 6, 2, 1, 4, 1, 5, 2, 5, 3, 6, 2, 6, 4, 8, 2, 8, 6, 9, 7), ncol = 4)
set.seed(20261129)
simulate <- function(n, k, sd_target, sd_rater, sd_error) {
  outer(rnorm(n, 0, sd_target), rnorm(k, 0, sd_rater), "+") + matrix(rnorm(n * k, 0, sd_error), n, k)
}
sets <- list(
  shrout_fleiss = sf,
  sim_30x5 = round(simulate(30, 5, 1.0, 0.3, 0.35), 4),
  sim_10x5 = round(simulate(10, 5, 1.0, 0.5, 0.3), 4),
  sim_low_20x3 = round(simulate(20, 3, 0.5, 0.2, 1.0), 4)
)

long <- do.call(rbind, lapply(names(sets), function(name) {
  x <- sets[[name]]
  data.frame(dataset = name, target = rep(seq_len(nrow(x)), ncol(x)),
             rater = rep(seq_len(ncol(x)), each = nrow(x)), value = as.vector(x))
}))
write.csv(long, file.path(out, "icc_data.csv"), row.names = FALSE)

res <- do.call(rbind, lapply(names(sets), function(name) {
  r <- psych::ICC(sets[[name]], alpha = 0.05, lmer = FALSE)$results
  keep <- r[r$type %in% c("ICC2", "ICC3"), ]
  data.frame(dataset = name, kind = ifelse(keep$type == "ICC2", "2,1", "3,1"), icc = keep$ICC,
             lower = keep$`lower bound`, upper = keep$`upper bound`, F = keep$F, df1 = keep$df1,
             df2 = keep$df2)
}))
write.csv(res, file.path(out, "icc_psych.csv"), row.names = FALSE)
writeLines(c(R.version.string, paste("psych", as.character(packageVersion("psych"))),
             "ICC2 = ICC(2,1) two-way random, absolute agreement; ICC3 = ICC(3,1) two-way mixed, consistency"),
           file.path(out, "versions.txt"))
