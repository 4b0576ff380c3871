package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;

/**
 * Binds the catalogue's kernel calls to the CPU's loops. Every kernel id maps to its loop here;
 * adding a kernel to the catalogue without a loop fails at compile time (the switch is exhaustive).
 */
final class CpuKernels {
    private CpuKernels() {}

    /** The loop of one step kernel call. */
    static BlockLoop step(KernelCall call) {
        return switch (call.kernel()) {
            case SGD -> SgdLoops.sgd(call);
            case SGD_MOMENTUM -> SgdLoops.sgdMomentum(call);
            case ADAM -> AdamLoops.adam(call, false);
            case ADAM_AMSGRAD -> AdamLoops.adam(call, true);
            case RADAM_SGD_PHASE -> RAdamLoops.sgdPhase(call);
            case RADAM_RECTIFIED -> RAdamLoops.rectified(call);
            case RADAM_ORIGINAL_SGD_PHASE -> RAdamLoops.originalSgdPhase(call);
            case RADAM_ORIGINAL_RECTIFIED -> RAdamLoops.originalRectified(call);
            case SGD_SCHEDULE_FREE -> ScheduleFreeLoops.sgd(call);
            case ADAMW_SCHEDULE_FREE -> ScheduleFreeLoops.adamW(call, false);
            case ADAMW_SCHEDULE_FREE_MOMENTUM -> ScheduleFreeLoops.adamW(call, true);
            case RADAM_SCHEDULE_FREE -> ScheduleFreeLoops.radam(call);
            case RADAM_SCHEDULE_FREE_PRESCALED -> ScheduleFreeLoops.radamPrescaled(call);
            case COPY_PARAMS -> WrapperLoops.copyParams(call);
            case SET_PARAMS -> WrapperLoops.setParams();
            case EMA_BLEND -> WrapperLoops.emaBlend(call);
            case LOOKAHEAD_SYNC, LOOKAHEAD_SYNC_RESET, LOOKAHEAD_SYNC_PULLBACK -> WrapperLoops.lookaheadSync(call);
            case SCHEDULE_FREE_TRAIN_FROM_EVAL -> ScheduleFreeLoops.trainFromEval(call);
            case SCHEDULE_FREE_EVAL -> throw new IllegalArgumentException(call.kernel().id() + " is a view kernel");
        };
    }

    /** The loop of one view kernel call. */
    static ViewLoop view(KernelCall call) {
        if (call.kernel() != Kernel.SCHEDULE_FREE_EVAL) {
            throw new IllegalArgumentException(call.kernel().id() + " is not a view kernel");
        }
        return ScheduleFreeLoops.evalView(call);
    }

    /**
     * Binds the programs of one run. The tensors of a group share their calls, so each distinct
     * call (by identity) is bound once per run, not once per tensor: models have hundreds of tensors.
     */
    static final class Binder {
        /** A call's loop; {@code fusedWith} is the next call when the loop runs both. */
        private record Bound(BlockLoop loop, KernelCall fusedWith) {}

        private final Map<KernelCall, Bound> bound = new IdentityHashMap<>();

        /**
         * One loop for a tensor's whole program, applied tile by tile (see {@link Chain}). A
         * Schedule-Free AdamW step directly followed by an EMA blend runs as one fused loop,
         * bit-identical to the two in sequence.
         */
        BlockLoop program(List<KernelCall> calls) {
            Bound first = bind(calls.get(0), calls.size() > 1 ? calls.get(1) : null);
            int used = first.fusedWith == null ? 1 : 2;
            if (used == calls.size()) {
                return first.loop;
            }
            List<BlockLoop> loops = new ArrayList<>(calls.size());
            loops.add(first.loop);
            for (int i = used; i < calls.size(); i++) {
                Bound b = bind(calls.get(i), i + 1 < calls.size() ? calls.get(i + 1) : null);
                loops.add(b.loop);
                if (b.fusedWith != null) {
                    i++;
                }
            }
            return Chain.of(loops);
        }

        private Bound bind(KernelCall call, KernelCall next) {
            Bound b = bound.get(call);
            if (b != null && (b.fusedWith == null || b.fusedWith == next)) {
                return b;
            }
            if (call.kernel() == Kernel.ADAMW_SCHEDULE_FREE && ScheduleFreeLoops.adamWCommon(call)
                    && next != null && next.kernel() == Kernel.EMA_BLEND) {
                b = new Bound(ScheduleFreeLoops.adamWWithEma(call, next), next);
            } else {
                b = new Bound(step(call), null);
            }
            bound.put(call, b);
            return b;
        }
    }
}
