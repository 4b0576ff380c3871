package dev.optsidecar.server.engine.kernel;

/** torch's lerp: a + w·(b − a) for |w| < 0.5, else b − (b − a)·(1 − w), so that lerp(a, b, 1) is b. */
public final class Lerp {
    private Lerp() {}

    public static float lerp(float a, float b, float w) {
        return Math.abs(w) < 0.5f ? a + w * (b - a) : b - (b - a) * (1f - w);
    }
}
