# DEV-ONLY: writes the R reference values that tests/test_survival_r.py checks pmed.survival against.
# Not run by the tests or CI. Inputs are the lifelines data sets exported by
# tests/r/export_datasets.py (so R and Python read the same rows).
# Run from the repository root:
#   .venv/bin/python tests/r/export_datasets.py && Rscript tests/r/survival_reference.R
suppressPackageStartupMessages(library(survival))
out <- "tests/data/r_reference/survival"
rd <- function(name) read.csv(file.path(out, paste0("data_", name, ".csv")))
wr <- function(df, name) write.csv(df, file.path(out, paste0(name, ".csv")), row.names = FALSE)
options(digits = 17)

lung <- rd("lung")
lung$ecog3 <- ifelse(lung$ph.ecog >= 2, "2+", as.character(lung$ph.ecog))  # 3 groups: 0, 1, 2+
rossi <- rd("rossi")
rossi$prio3 <- cut(rossi$prio, c(-1, 0, 2, Inf), labels = c("0", "1-2", "3+"))
heart <- rd("stanford")

## 1. cox.zph (survival >= 3.0 score test), per term and GLOBAL --------------------------------
models <- list(
  lung = list(data = lung, formula = Surv(time, status) ~ age + sex + ph.ecog),
  lung_factor = list(data = lung, formula = Surv(time, status) ~ age + sex + factor(ph.ecog)),
  rossi = list(data = rossi, formula = Surv(week, arrest) ~ fin + age + race + wexp + mar + paro + prio),
  rossi_strata = list(data = rossi, formula = Surv(week, arrest) ~ fin + age + prio + strata(wexp)),
  heart = list(data = heart, formula = Surv(start, stop, event) ~ age + year + surgery + transplant)
)
zph <- list()
for (m in names(models)) for (ties in c("efron", "breslow")) {
  fit <- coxph(models[[m]]$formula, data = models[[m]]$data, ties = ties)
  for (tr in c("km", "rank", "identity", "log")) {
    z <- cox.zph(fit, transform = tr)
    tab <- z$table
    zph[[length(zph) + 1]] <- data.frame(model = m, ties = ties, transform = tr, term = rownames(tab),
                                         chisq = tab[, "chisq"], df = tab[, "df"], p = tab[, "p"])
  }
}
wr(do.call(rbind, zph), "cox_zph")

## 2. Cox fits: coefficients, SEs, log-likelihood, score (log-rank) test ------------------------
cox <- list()
for (m in names(models)) for (ties in c("efron", "breslow")) {
  if (m == "lung_factor") next
  fit <- coxph(models[[m]]$formula, data = models[[m]]$data, ties = ties)
  s <- summary(fit)
  cox[[length(cox) + 1]] <- data.frame(model = m, ties = ties, term = names(coef(fit)), coef = unname(coef(fit)),
                                       se = unname(sqrt(diag(vcov(fit)))), loglik_null = fit$loglik[1],
                                       loglik = fit$loglik[2], score = unname(s$sctest["test"]),
                                       score_df = unname(s$sctest["df"]), score_p = unname(s$sctest["pvalue"]),
                                       n = fit$n, nevent = fit$nevent)
}
wr(do.call(rbind, cox), "coxph")

## 2b. Schoenfeld residuals (one row per event, sorted by time within strata) --------------------
sch <- list()
for (m in c("lung", "rossi_strata")) {
  fit <- coxph(models[[m]]$formula, data = models[[m]]$data, ties = "efron")
  r <- residuals(fit, type = "schoenfeld")
  sch[[m]] <- data.frame(model = m, time = as.numeric(rownames(r)), r, check.names = FALSE)
}
wr(sch$lung, "schoenfeld_lung")
wr(sch$rossi_strata, "schoenfeld_rossi_strata")

## 3. Baseline cumulative hazard, basehaz() (= survfit.coxph; Efron vs Breslow) -----------------
bh <- list()
for (m in c("lung", "rossi_strata")) for (ties in c("efron", "breslow")) for (centered in c(TRUE, FALSE)) {
  fit <- coxph(models[[m]]$formula, data = models[[m]]$data, ties = ties)
  b <- basehaz(fit, centered = centered)
  if (is.null(b$strata)) b$strata <- ""
  bh[[length(bh) + 1]] <- data.frame(model = m, ties = ties, centered = centered, strata = as.character(b$strata),
                                     time = b$time, hazard = b$hazard)
}
wr(do.call(rbind, bh), "basehaz")

## 4. Log-rank: survdiff ----------------------------------------------------------------------
cases <- list(
  lung_sex = list(data = lung, formula = Surv(time, status) ~ sex),
  lung_ecog3 = list(data = lung, formula = Surv(time, status) ~ ecog3),
  lung_sex_strata_ecog3 = list(data = lung, formula = Surv(time, status) ~ sex + strata(ecog3)),
  rossi_fin = list(data = rossi, formula = Surv(week, arrest) ~ fin),
  rossi_prio3 = list(data = rossi, formula = Surv(week, arrest) ~ prio3)
)
sd <- list()
for (k in names(cases)) {
  s <- survdiff(cases[[k]]$formula, data = cases[[k]]$data)  # rows with a missing group are dropped
  obs <- if (is.matrix(s$obs)) rowSums(s$obs) else s$obs
  ex <- if (is.matrix(s$exp)) rowSums(s$exp) else s$exp
  sd[[length(sd) + 1]] <- data.frame(case = k, group = sub("^.*=", "", names(s$n)), n = as.vector(s$n),
                                     observed = obs, expected = ex, chisq = s$chisq,
                                     df = length(s$n) - 1, p = s$pvalue)
}
wr(do.call(rbind, sd), "survdiff")

## 5. Kaplan-Meier: curve with CI, median with CI, restricted mean (print(survfit, rmean = tau)) -
km <- list(); med <- list()
km_cases <- list(lung = list(data = lung, formula = Surv(time, status) ~ sex, taus = c(365, 730)),
                 rossi = list(data = rossi, formula = Surv(week, arrest) ~ fin, taus = c(30, 52)))
for (k in names(km_cases)) for (ct in c("log", "log-log", "plain")) {
  f <- survfit(km_cases[[k]]$formula, data = km_cases[[k]]$data, conf.type = ct)
  s <- summary(f, censored = TRUE)
  km[[length(km) + 1]] <- data.frame(case = k, conf_type = ct, strata = sub("^.*=", "", as.character(s$strata)),
                                     time = s$time, n_risk = s$n.risk, n_event = s$n.event, surv = s$surv,
                                     std_err = s$std.err, lower = s$lower, upper = s$upper)
  for (tau in km_cases[[k]]$taus) {
    tab <- summary(f, rmean = tau)$table
    med[[length(med) + 1]] <- data.frame(case = k, conf_type = ct, strata = sub("^.*=", "", rownames(tab)), tau = tau,
                                         median = tab[, "median"], lower = tab[, "0.95LCL"], upper = tab[, "0.95UCL"],
                                         rmean = tab[, "rmean"], se_rmean = tab[, "se(rmean)"])
  }
}
wr(do.call(rbind, km), "km_curve")
wr(do.call(rbind, med), "km_median_rmean")

## Provenance -----------------------------------------------------------------------------
writeLines(c(R.version.string, paste("survival", as.character(packageVersion("survival")))),
           file.path(out, "versions.txt"))
