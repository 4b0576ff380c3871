package dev.optsidecar.server.optim;

/**
 * The first-moment update m = β1·m + (1 − β1)·g in the two float forms torch has used: 1.13's
 * mul + add (here fused, as its vector loops do), and 2.x's lerp(m, g, 1 − β1). They differ by
 * about one ulp per step.
 */
record FirstMoment(float beta1, float oneMinusBeta1, boolean lerp) {
    static FirstMoment of(double beta1, boolean lerp) {
        return new FirstMoment((float) beta1, (float) (1 - beta1), lerp);
    }

    float update(float m, float g) {
        return lerp ? Lerp.lerp(m, g, oneMinusBeta1) : Math.fma(oneMinusBeta1, g, m * beta1);
    }
}
