package dev.optsidecar.server.conformance;

/** The outcome of one case: PASS or FAIL with the worst error as a fraction of tolerance, or SKIP. */
record CaseResult(String name, Outcome outcome, double worstFraction, String detail) {
    enum Outcome { PASS, FAIL, SKIP }

    String line() {
        return switch (outcome) {
            case PASS -> String.format("PASS  %-40s worst %.3f of tolerance (%s)", name, worstFraction, detail);
            case FAIL -> String.format("FAIL  %-40s worst %.3g of tolerance: %s", name, worstFraction, detail);
            case SKIP -> String.format("SKIP  %-40s %s", name, detail);
        };
    }
}
