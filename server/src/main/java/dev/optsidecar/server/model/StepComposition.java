package dev.optsidecar.server.model;

import dev.optsidecar.server.engine.Chain;
import dev.optsidecar.server.engine.FusedStep;
import dev.optsidecar.server.engine.TensorStep;
import dev.optsidecar.server.engine.UpdateNorm;
import dev.optsidecar.server.optim.EmaShadow;
import dev.optsidecar.server.optim.Lookahead;
import dev.optsidecar.server.optim.StepPlan;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.DoubleAdder;

/**
 * What one step runs on each tensor, as one pass: the algorithm's kernel (if the tensor has a
 * gradient), then a due Lookahead synchronisation, then due EMA updates, chained tile by tile; a
 * single blending EMA update is folded into the kernel's own loop where the algorithm offers it.
 */
final class StepComposition {
    private StepComposition() {}

    /**
     * @param skip          tensors without a gradient this step
     * @param sync          whether Lookahead synchronises this step
     * @param emaDue        indexes of the EMA shadows that update this step
     * @param updateSquares where to add |θ_new − θ_old|², or null when not measured
     */
    static List<TensorStep> compose(Model m, boolean[] skip, Map<GroupState, StepPlan> plans, boolean sync,
                                    List<Integer> emaDue, DoubleAdder updateSquares) {
        Training training = m.training();
        long[] emaUpdates = m.emaUpdates;
        List<TensorStep> steps = new ArrayList<>();
        // A single blending EMA update right after the kernel can be folded into its loop.
        int foldable = !sync && emaDue.size() == 1 && emaUpdates[emaDue.get(0)] > 0 ? emaDue.get(0) : -1;
        for (TensorEntry tensor : m.tensors()) {
            List<FusedStep> chain = new ArrayList<>();
            int folded = -1;
            if (!skip[tensor.index]) {
                StepPlan plan = plans.get(tensor.group);
                FusedStep step = null;
                if (foldable >= 0 && plan.withEma() != null) {
                    EmaShadow shadow = training.ema().get(foldable);
                    step = plan.withEma().forTensor(tensor.steps + 1, tensor.slot(EmaShadow.slotName(foldable)),
                            shadow.keep(), shadow.take());
                    folded = step == null ? -1 : foldable;
                }
                chain.add(step != null ? step : plan.forTensor().apply(tensor.steps + 1));
            }
            if (sync) {
                chain.add(training.lookahead().sync(tensor.slot(Lookahead.SLOW_SLOT),
                        tensor.group.algorithm.momentumSlot(), tensor.slot(Lookahead.CACHE_SLOT)));
            }
            for (int i : emaDue) {
                if (i != folded) {
                    chain.add(training.ema().get(i).update(emaUpdates[i], tensor.slot(EmaShadow.slotName(i))));
                }
            }
            if (!chain.isEmpty()) {
                FusedStep step = Chain.of(chain);
                steps.add(new TensorStep(tensor.storage, updateSquares == null ? step : new UpdateNorm(step, updateSquares)));
            }
        }
        return steps;
    }
}
