# Dev-only: writes the R reference output that tests/test_competing.py compares pmed.competing with.
# Run from the repository root:  Rscript tests/r/competing_reference.R
# Needs R >= 4 with the packages survival and cmprsk (Debian: r-cran-survival r-cran-cmprsk).
# Tests never run R; they read the CSVs this script writes to tests/data/r_reference/competing/.
suppressPackageStartupMessages({
  library(survival)
  library(cmprsk)
})
out <- "tests/data/r_reference/competing"
dir.create(out, showWarnings = FALSE, recursive = TRUE)
w <- function(x, name) write.csv(x, file.path(out, name), row.names = FALSE)

# --- data set 1: survival::mgus2, progression to plasma-cell malignancy (1) vs death first (2) ---
mg <- survival::mgus2
mg <- mg[!is.na(mg$mspike), ]
mgus <- data.frame(
  id = mg$id,
  time = ifelse(mg$pstat == 0, mg$futime, mg$ptime),      # months
  status = ifelse(mg$pstat == 0, 2 * mg$death, 1),
  age = mg$age,
  male = as.integer(mg$sex == "M"),
  mspike = mg$mspike,
  agegrp = as.character(cut(mg$age, c(0, 60, 75, Inf), labels = c("le60", "60to75", "gt75")))
)

# --- data set 2: simulated, 3 arms, integer days (many ties), administrative + random censoring ---
set.seed(20261129)
n <- 400
arm <- sample(c("a", "b", "c"), n, replace = TRUE, prob = c(0.4, 0.35, 0.25))
x <- round(rnorm(n), 3)
stratum <- sample(1:2, n, replace = TRUE)
lp1 <- 0.5 * (arm == "b") - 0.4 * (arm == "c") + 0.3 * x
lp2 <- 0.2 * (arm == "b") + 0.3 * (arm == "c") - 0.2 * x
t1 <- rexp(n, 0.004 * exp(lp1))
t2 <- rexp(n, 0.006 * exp(lp2))
cens <- pmin(runif(n, 30, 900), 600)
tt <- pmin(t1, t2, cens)
sim <- data.frame(
  id = seq_len(n),
  time = ceiling(tt),                                    # integer days: ties within and across causes
  status = ifelse(tt == cens, 0, ifelse(t1 < t2, 1, 2)),
  arm = arm, x = x, stratum = stratum,
  arm_b = as.integer(arm == "b"), arm_c = as.integer(arm == "c")
)

w(mgus, "mgus2_data.csv")
w(sim, "sim_data.csv")

reference <- function(d, group, covs, tag) {
  # Aalen-Johansen CIF with cmprsk's variance, at every observed time, half-way points and past the end.
  ci <- cuminc(d$time, d$status, d[[group]])
  ut <- sort(unique(d$time))
  grid <- sort(unique(c(0, ut, head(ut, -1) + diff(ut) / 2, max(ut) + 1)))
  tp <- timepoints(ci, grid)
  long <- do.call(rbind, lapply(rownames(tp$est), function(r) {
    parts <- strsplit(r, " ")[[1]]
    data.frame(group = parts[1], cause = as.integer(parts[2]), time = grid,
               est = tp$est[r, ], var = tp$var[r, ])
  }))
  w(long, paste0("cuminc_", tag, ".csv"))
  tests <- data.frame(cause = as.integer(rownames(ci$Tests)), ci$Tests, stratified = FALSE)
  if ("stratum" %in% names(d)) {
    cs <- cuminc(d$time, d$status, d[[group]], strata = d$stratum)
    tests <- rbind(tests, data.frame(cause = as.integer(rownames(cs$Tests)), cs$Tests, stratified = TRUE))
  }
  w(tests, paste0("gray_", tag, ".csv"))

  # Cause-specific Cox (Efron ties), competing event censored.
  f <- as.formula(paste("Surv(time, status == k) ~", paste(covs, collapse = " + ")))
  cs <- do.call(rbind, lapply(1:2, function(k) {
    fit <- coxph(as.formula(gsub("k\\)", paste0(k, ")"), deparse(f))), data = d, ties = "efron")
    data.frame(cause = k, term = names(coef(fit)), coef = unname(coef(fit)), se = unname(sqrt(diag(vcov(fit)))))
  }))
  w(cs, paste0("cause_specific_", tag, ".csv"))

  # Fine-Gray by finegray() + weighted coxph (cause 1 of interest).
  d$ev <- factor(d$status, 0:2, c("censor", "event", "competing"))
  fg <- finegray(Surv(time, ev) ~ ., data = d[, c("time", "ev", "id", covs)], etype = "event")
  if (tag == "sim") {  # the expanded data set itself (mgus2's has 41k rows: too big to commit)
    w(fg[, c("id", "fgstart", "fgstop", "fgstatus", "fgwt")], paste0("finegray_data_", tag, ".csv"))
  }
  ffg <- as.formula(paste("Surv(fgstart, fgstop, fgstatus) ~", paste(covs, collapse = " + ")))
  fits <- list(
    efron = coxph(ffg, data = fg, weights = fgwt),
    breslow = coxph(ffg, data = fg, weights = fgwt, ties = "breslow")
  )
  fgtab <- do.call(rbind, lapply(names(fits), function(tiesname) {
    fit <- fits[[tiesname]]
    clus <- coxph(update(ffg, . ~ . + cluster(id)), data = fg, weights = fgwt, ties = tiesname)
    data.frame(ties = tiesname, term = names(coef(fit)), coef = unname(coef(fit)),
               se_naive = unname(sqrt(diag(fit$naive.var))),
               se_robust = unname(sqrt(diag(vcov(fit)))),    # coxph default: one cluster per row
               se_cluster_id = unname(sqrt(diag(vcov(clus)))))
  }))
  w(fgtab, paste0("finegray_coxph_", tag, ".csv"))

  # cmprsk::crr on the original data.
  cr <- crr(d$time, d$status, as.matrix(d[, covs]), failcode = 1, cencode = 0)
  w(data.frame(term = covs, coef = unname(cr$coef), se = unname(sqrt(diag(cr$var)))), paste0("crr_", tag, ".csv"))
}

reference(mgus, "agegrp", c("age", "male", "mspike"), "mgus2")
reference(sim, "arm", c("arm_b", "arm_c", "x"), "sim")

writeLines(c(
  paste("R", paste(R.version$major, R.version$minor, sep = ".")),
  paste("survival", as.character(packageVersion("survival"))),
  paste("cmprsk", as.character(packageVersion("cmprsk")))
), file.path(out, "versions.txt"))
