# DEV-ONLY: reference output of R survival::coxph for tests/test_causal.py (not run by tests).
# Data: weighted_cox_ties_data.csv (integer times with many ties, non-integer weights, pairs).
# Run from the repo root: Rscript tests/data/r_reference/weighted_cox_robust.R
library(survival)
d <- read.csv("tests/data/r_reference/weighted_cox_ties_data.csv")
fits <- list(
  robust = coxph(Surv(time, event) ~ x1 + x2, data = d, weights = w, robust = TRUE, ties = "efron"),
  cluster = coxph(Surv(time, event) ~ x1 + x2 + cluster(pair), data = d, weights = w, ties = "efron")
)
out <- do.call(rbind, lapply(names(fits), function(k) {
  f <- fits[[k]]
  data.frame(fit = k, term = names(coef(f)), coef = sprintf("%.15g", coef(f)),
             robust_se = sprintf("%.15g", sqrt(diag(f$var))))
}))
write.csv(out, "tests/data/r_reference/weighted_cox_robust.csv", row.names = FALSE, quote = FALSE)
writeLines(c(R.version.string, paste("survival", packageVersion("survival"))),
           "tests/data/r_reference/weighted_cox_robust_versions.txt")
