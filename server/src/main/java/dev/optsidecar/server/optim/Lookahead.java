package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.FusedStep;

/**
 * Lookahead (Zhang et al. 2019; algorithms.md §7) around any algorithm: slow weights φ start as θ;
 * after every k-th inner step
 * <pre>
 *   θ = α·θ + (1 − α)·φ;  φ = θ
 * </pre>
 * and the inner SGD momentum buffer is kept (none), zeroed (reset), or blended the same way with a
 * cached copy (pullback). Train view: θ; eval view: φ.
 */
public record Lookahead(long k, double alpha, Pullback pullback) {
    public enum Pullback { NONE, RESET, PULLBACK }

    public static final String SLOW_SLOT = "slow";
    public static final String CACHE_SLOT = "cached_momentum";

    /** Whether the step that brings the counter to {@code stepsSinceSync} synchronises. */
    public boolean syncsAt(long stepsSinceSync) {
        return stepsSinceSync >= k;
    }

    /** φ ← θ: the slow weights at construction, in state slot {@code s}. */
    public FusedStep initialise(int s) {
        return (p, g, state, from, to) -> System.arraycopy(p, from, state[s], from, to - from);
    }

    /**
     * The synchronisation, evaluated as θ·α followed by adding φ·(1 − α), as the reference does.
     *
     * @param s     φ's slot
     * @param mom   the inner momentum buffer's slot (for reset and pullback)
     * @param cache pullback's cached momentum slot
     */
    public FusedStep sync(int s, int mom, int cache) {
        float a = (float) alpha;
        float b = (float) (1 - alpha);
        Pullback mode = pullback;
        return (p, g, state, from, to) -> {
            float[] slow = state[s];
            for (int i = from; i < to; i++) {
                float theta = p[i] * a + slow[i] * b;
                p[i] = theta;
                slow[i] = theta;
            }
            if (mode == Pullback.RESET) {
                java.util.Arrays.fill(state[mom], from, to, 0f);
            } else if (mode == Pullback.PULLBACK) {
                float[] m = state[mom];
                float[] cached = state[cache];
                for (int i = from; i < to; i++) {
                    float blended = m[i] * a + cached[i] * b;
                    m[i] = blended;
                    cached[i] = blended;
                }
            }
        };
    }
}
