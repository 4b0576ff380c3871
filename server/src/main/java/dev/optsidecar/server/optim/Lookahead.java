package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

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

    /** φ ← θ: the slow weights at construction, in state slot {@code slot}. */
    public KernelCall initialise(int slot) {
        return Kernel.COPY_PARAMS.call().slots(slot).build();
    }

    /**
     * The synchronisation, evaluated as θ·α followed by adding φ·(1 − α), as the reference does.
     *
     * @param slow  φ's slot
     * @param mom   the inner momentum buffer's slot (for reset and pullback)
     * @param cache pullback's cached momentum slot
     */
    public KernelCall sync(int slow, int mom, int cache) {
        KernelCall.Builder call = switch (pullback) {
            case NONE -> Kernel.LOOKAHEAD_SYNC.call().slots(slow);
            case RESET -> Kernel.LOOKAHEAD_SYNC_RESET.call().slots(slow, mom);
            case PULLBACK -> Kernel.LOOKAHEAD_SYNC_PULLBACK.call().slots(slow, mom, cache);
        };
        return call.scalar("alpha", (float) alpha).scalar("one_minus_alpha", (float) (1 - alpha)).build();
    }
}
