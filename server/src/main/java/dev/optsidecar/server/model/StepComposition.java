package dev.optsidecar.server.model;

import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.kernel.KernelCall;
import dev.optsidecar.server.optim.EmaShadow;
import dev.optsidecar.server.optim.Lookahead;
import dev.optsidecar.server.optim.StepPlan;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * What one step runs on each tensor, as one program of kernel calls: the algorithm's kernel (if
 * the tensor has a gradient), then a due Lookahead synchronisation, then due EMA updates. The
 * engine runs each program as one pass (and may fuse neighbouring calls).
 */
final class StepComposition {
    private StepComposition() {}

    /**
     * @param skip   tensors without a gradient this step
     * @param sync   whether Lookahead synchronises this step
     * @param emaDue indexes of the EMA shadows that update this step
     */
    static List<TensorProgram> compose(Model m, boolean[] skip, Map<GroupState, StepPlan> plans, boolean sync,
                                       List<Integer> emaDue) {
        Training training = m.training();
        long[] emaUpdates = m.emaUpdates;
        List<TensorProgram> programs = new ArrayList<>();
        // Tensors whose wrapper slots sit at the same indexes share one call, so that engines bind it once.
        Map<List<Integer>, KernelCall> wrapperCalls = new HashMap<>();
        for (TensorEntry tensor : m.tensors()) {
            List<KernelCall> calls = new ArrayList<>();
            if (!skip[tensor.index]) {
                calls.add(plans.get(tensor.group).forTensor().apply(tensor.steps + 1));
            }
            if (sync) {
                int slow = tensor.slot(Lookahead.SLOW_SLOT);
                int momentum = tensor.group.algorithm.momentumSlot();
                int cache = tensor.slot(Lookahead.CACHE_SLOT);
                calls.add(wrapperCalls.computeIfAbsent(List.of(-1, slow, momentum, cache),
                        key -> training.lookahead().sync(slow, momentum, cache)));
            }
            for (int i : emaDue) {
                int shadow = tensor.slot(EmaShadow.slotName(i));
                calls.add(wrapperCalls.computeIfAbsent(List.of(i, shadow),
                        key -> training.ema().get(i).update(emaUpdates[i], shadow)));
            }
            if (!calls.isEmpty()) {
                programs.add(new TensorProgram(tensor.storage, calls, m.replyWeights(tensor.index)));
            }
        }
        return programs;
    }
}
