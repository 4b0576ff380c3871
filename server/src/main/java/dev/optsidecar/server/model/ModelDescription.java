package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.GroupCounters;
import dev.optsidecar.proto.v1.GroupInfo;
import dev.optsidecar.proto.v1.GroupScalarInfo;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelState;
import dev.optsidecar.proto.v1.Schedule;
import dev.optsidecar.proto.v1.TensorInfo;
import dev.optsidecar.server.optim.GroupScalar;

/** Builds Describe's answer from a model; the caller holds the model's read lock. */
final class ModelDescription {
    private ModelDescription() {}

    static ModelInfo of(Model m) {
        ModelInfo.Builder b = ModelInfo.newBuilder()
                .setName(m.name())
                .setOptimizer(m.config())
                .setVersion(m.version())
                .addAllViews(m.views())
                .setMemoryBytes(m.memoryBytes() + m.sessionBytes() + m.recordBytes() + m.spareBytes())
                .setCoordination(m.coordinationStatus())
                .setDefaults(m.defaults())
                .setEngine(m.engine().name())
                .setDevice(m.engine().device())
                .setDeviceUuid(m.engine().deviceUuid())
                .setSchedule(Schedule.newBuilder()
                        .setType(m.training().schedule().type())
                        .setParameters(m.training().schedule().parameters()));
        ModelState.Builder state = ModelState.newBuilder()
                .setVersion(m.version())
                .setScheduleStep(m.scheduleStep)
                .setLookaheadStep(m.lookaheadStep)
                .addAllClients(m.ledger().toProto());
        for (long n : m.emaUpdates) {
            state.addEmaUpdates(n);
        }
        long total = 0;
        for (TensorEntry t : m.tensors()) {
            TensorInfo.Builder ti = TensorInfo.newBuilder()
                    .setName(t.name).setNumel(t.numel).setGroup(t.group.name).setSteps(t.steps)
                    .addAllSlots(t.slots);
            for (long d : t.shape) {
                ti.addShape(d);
            }
            b.addTensors(ti);
            state.addTensorSteps(t.steps);
            total += t.numel;
        }
        for (GroupState g : m.groups()) {
            GroupInfo.Builder gi = GroupInfo.newBuilder()
                    .setName(g.name)
                    .setHyperparameters(g.effective())
                    .setLr(m.lrFor(g));
            for (GroupScalar declared : g.algorithm.groupScalars()) {
                gi.addScalars(GroupScalarInfo.newBuilder().setName(declared.name()).setInitial(declared.initial()));
            }
            b.addGroups(gi);
            state.addGroups(GroupCounters.newBuilder()
                    .setGroup(g.name)
                    .setLr(g.baseLr)
                    .putAllScalars(g.scalars.asMap())
                    .setHyperparameters(g.effective()));
        }
        return b.setTotalElements(total).setState(state).build();
    }
}
