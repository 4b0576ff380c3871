package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.kernel.KernelCall;

/** The CPU loops of {@code sgd} and {@code sgd_momentum}. */
final class SgdLoops {
    private SgdLoops() {}

    static BlockLoop sgd(KernelCall c) {
        float scale = c.scalar("grad_scale");
        float wd = c.scalar("weight_decay");
        float negLr = c.scalar("neg_lr");
        boolean l2 = c.flag("coupled_weight_decay");
        return (p, g, s, from, to) -> {
            for (int i = from; i < to; i++) {
                float pi = p[i];
                float d = l2 ? scale * g[i] + wd * pi : scale * g[i];
                p[i] = pi + negLr * d;
            }
        };
    }

    static BlockLoop sgdMomentum(KernelCall c) {
        float scale = c.scalar("grad_scale");
        float wd = c.scalar("weight_decay");
        float negLr = c.scalar("neg_lr");
        float mu = c.scalar("momentum");
        float keep = c.scalar("one_minus_dampening");
        boolean l2 = c.flag("coupled_weight_decay");
        boolean first = c.flag("first_step");
        boolean nest = c.flag("nesterov");
        int bufSlot = c.slot("momentum_buffer");
        return (p, g, s, from, to) -> {
            float[] buf = s[bufSlot];
            for (int i = from; i < to; i++) {
                float pi = p[i];
                float d = l2 ? scale * g[i] + wd * pi : scale * g[i];
                float b = first ? d : buf[i] * mu + keep * d;
                buf[i] = b;
                float dir = nest ? d + mu * b : b;
                p[i] = pi + negLr * dir;
            }
        };
    }
}
