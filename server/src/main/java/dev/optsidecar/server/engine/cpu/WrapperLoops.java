package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

/** The CPU loops of the kernels wrappers use: copying θ into a slot, EMA blends, Lookahead's synchronisation. */
final class WrapperLoops {
    private WrapperLoops() {}

    static BlockLoop copyParams(KernelCall call) {
        int target = call.slot("target");
        return (p, g, state, from, to) -> System.arraycopy(p, from, state[target], from, to - from);
    }

    /** θ = g: a trainer's new weights, sent in the step's gradient buffer. */
    static BlockLoop setParams() {
        return (p, g, state, from, to) -> System.arraycopy(g, from, p, from, to - from);
    }

    static BlockLoop emaBlend(KernelCall call) {
        float keep = call.scalar("keep");
        float take = call.scalar("take");
        int shadow = call.slot("shadow");
        return (p, g, state, from, to) -> {
            float[] e = state[shadow];
            for (int i = from; i < to; i++) {
                e[i] = Math.fma(take, p[i], keep * e[i]);
            }
        };
    }

    /** θ·α + φ·(1 − α), as the reference evaluates it, into θ and φ; the momentum kept, zeroed or pulled back. */
    static BlockLoop lookaheadSync(KernelCall call) {
        float a = call.scalar("alpha");
        float b = call.scalar("one_minus_alpha");
        Kernel mode = call.kernel();
        int s = call.slot("slow");
        int mom = mode == Kernel.LOOKAHEAD_SYNC ? -1 : call.slot("momentum_buffer");
        int cache = mode == Kernel.LOOKAHEAD_SYNC_PULLBACK ? call.slot("cached_momentum") : -1;
        return (p, g, state, from, to) -> {
            float[] slow = state[s];
            for (int i = from; i < to; i++) {
                float theta = p[i] * a + slow[i] * b;
                p[i] = theta;
                slow[i] = theta;
            }
            if (mode == Kernel.LOOKAHEAD_SYNC_RESET) {
                java.util.Arrays.fill(state[mom], from, to, 0f);
            } else if (mode == Kernel.LOOKAHEAD_SYNC_PULLBACK) {
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
