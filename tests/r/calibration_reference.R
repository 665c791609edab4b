# DEV-ONLY: writes the R reference values that tests/test_validation.py checks
# pmed.validation.smoothed_calibration against. Not run by the tests or CI.
# Method: Austin, Harrell & van Klaveren (2020, Stat Med 39:2714), Cox model on a restricted
# cubic spline (3 knots, Hmisc default quantiles) of cloglog(predicted risk); observed risk at
# the horizon = 1 - S(horizon | spline); ICI/E50/E90 as Austin & Steyerberg (2019).
# Breslow ties (survival::coxph ties = "breslow"; survfit then uses the Breslow hazard).
# Run from the repository root:  Rscript tests/r/calibration_reference.R
suppressPackageStartupMessages({library(survival); library(rms)})
out <- "tests/data/r_reference/calibration"
options(digits = 17)
set.seed(20201)  # the data set is fixed once; the Python test reads it, not the seed
n <- 1500
x <- rnorm(n)
true_rate <- 0.4 * exp(0.9 * x)
t_event <- rexp(n, true_rate)
t_cens <- runif(n, 0, 4)
time <- round(pmin(t_event, t_cens), 4)  # rounding creates a few ties
event <- as.integer(t_event <= t_cens)
horizon <- 1
true_risk <- 1 - exp(-true_rate * horizon)
cases <- list(
  calibrated = true_risk,
  overfitted = plogis(1.6 * qlogis(true_risk) + 0.2),
  underestimated = plogis(qlogis(true_risk) - 0.7)
)
data <- data.frame(time = time, event = event)
ref <- list()
obs_rows <- list()
for (nm in names(cases)) {
  p <- cases[[nm]]
  data[[nm]] <- p
  cll <- log(-log(1 - p))
  knots <- quantile(cll, c(0.10, 0.50, 0.90))
  d <- data.frame(time = time, event = event, cll = cll)
  # rms route (Austin et al.'s published code), Breslow ties
  fit <- cph(Surv(time, event) ~ rcs(cll, knots), data = d, x = TRUE, y = TRUE, surv = TRUE,
             method = "breslow")
  obs_rms <- 1 - survest(fit, newdata = d, times = horizon)$surv
  # survival-only route: same spline basis by Hmisc, coxph + survfit
  basis <- Hmisc::rcspline.eval(cll, knots = knots, inclx = TRUE)
  colnames(basis) <- paste0("s", seq_len(ncol(basis)))
  d2 <- data.frame(time = time, event = event, basis)
  fit2 <- coxph(Surv(time, event) ~ ., data = d2, ties = "breslow")
  sf <- survfit(fit2, newdata = d2[, colnames(basis), drop = FALSE])
  obs <- 1 - as.numeric(summary(sf, times = horizon)$surv)
  err <- abs(obs - p)
  ref[[nm]] <- data.frame(case = nm, ici = mean(err), e50 = median(err),
                          e90 = as.numeric(quantile(err, 0.9)), emax = max(err),
                          max_abs_diff_rms_vs_survival = max(abs(obs - obs_rms)),
                          beta_1 = coef(fit2)[1], beta_2 = coef(fit2)[2])
  obs_rows[[nm]] <- obs
}
write.csv(data, file.path(out, "data.csv"), row.names = FALSE)
write.csv(do.call(rbind, ref), file.path(out, "reference.csv"), row.names = FALSE)
write.csv(as.data.frame(obs_rows), file.path(out, "observed.csv"), row.names = FALSE)
writeLines(c(R.version.string, paste("survival", packageVersion("survival")),
             paste("rms", packageVersion("rms")), paste("Hmisc", packageVersion("Hmisc"))),
           file.path(out, "versions.txt"))
