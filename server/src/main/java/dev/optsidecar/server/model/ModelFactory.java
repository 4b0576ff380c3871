package dev.optsidecar.server.model;

import com.google.protobuf.ProtocolMessageEnum;
import com.google.protobuf.Struct;
import dev.optsidecar.proto.v1.Coordination;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.ModelState;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.WireNumbers;
import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.optim.Algorithm;
import dev.optsidecar.server.optim.AlgorithmDefinition;
import dev.optsidecar.server.optim.Algorithms;
import dev.optsidecar.server.optim.EmaShadow;
import dev.optsidecar.server.optim.Hyperparameters;
import dev.optsidecar.server.optim.Lookahead;
import dev.optsidecar.server.optim.schedule.Schedule;
import dev.optsidecar.server.optim.schedule.Schedules;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ScheduledExecutorService;

/** Validates a ModelSpec, field by field, and allocates the model it describes. */
final class ModelFactory {
    static final String DEFAULT_GROUP = "default";

    private ModelFactory() {}

    static PendingModel build(ModelSpec spec, Engine engine, ModelRegistry registry, ScheduledExecutorService timers) {
        String name = spec.getName();
        if (name.isEmpty()) {
            throw OptError.invalid("spec.name: a model name is required");
        }
        if (spec.getTensorsCount() == 0) {
            throw OptError.invalid("spec.tensors: model '%s' has no tensors", Echo.of(name));
        }
        int maxTensors = registry.limits().maxTensorsPerModel();
        if (spec.getTensorsCount() > maxTensors) {
            throw OptError.exhausted("spec.tensors: model '%s' has %d tensors, more than the server's limit of %d per"
                    + " model (raise it with --max-tensors-per-model)", name, spec.getTensorsCount(), maxTensors);
        }
        // The spec and each tensor's bookkeeping are counted before any of it is built.
        long metadata = MemoryEstimates.model(spec);
        registry.reserve(name, metadata);
        try {
            return build(spec, engine, registry, timers, metadata);
        } catch (RuntimeException | Error e) {
            registry.release(metadata);
            throw e;
        }
    }

    private static PendingModel build(ModelSpec spec, Engine engine, ModelRegistry registry,
                                      ScheduledExecutorService timers, long metadata) {
        String name = spec.getName();
        OptimizerConfig config = spec.getOptimizer();
        AlgorithmDefinition definition = Algorithms.byName(config.getAlgorithm(), "spec.optimizer.algorithm");
        Training training = training(config);
        known(config.getNonFinite(), config.getNonFiniteValue(), "spec.optimizer.non_finite");
        checkCoordination(spec.getCoordination());
        if (spec.hasState()) {
            checkCounters(spec.getState());
        }

        Map<String, Integer> tensorIndex = new HashMap<>();
        List<long[]> shapes = new ArrayList<>();
        List<Long> sizes = new ArrayList<>();
        for (int i = 0; i < spec.getTensorsCount(); i++) {
            TensorSpec t = spec.getTensors(i);
            String field = "spec.tensors[" + i + "]";
            if (t.getName().isEmpty()) {
                throw OptError.invalid("%s.name: a tensor name is required", field);
            }
            if (tensorIndex.putIfAbsent(t.getName(), i) != null) {
                throw OptError.invalid("%s.name: duplicate tensor name '%s'", field, Echo.of(t.getName()));
            }
            long[] shape = new long[t.getShapeCount()];
            long numel = 1;
            for (int d = 0; d < shape.length; d++) {
                shape[d] = t.getShape(d);
                if (shape[d] <= 0) {
                    throw OptError.invalid("%s.shape[%d]: tensor '%s' has dimension %s; dimensions must be > 0",
                            field, d, Echo.of(t.getName()), Long.toUnsignedString(shape[d]));
                }
                try {
                    numel = Math.multiplyExact(numel, shape[d]);
                } catch (ArithmeticException e) {
                    throw OptError.invalid("%s.shape: tensor '%s' has too many elements", field,
                            Echo.of(t.getName()));
                }
            }
            shapes.add(shape);
            sizes.add(numel);
        }

        // Groups: each tensor belongs to exactly one; the unnamed rest form "default".
        String[] groupOf = new String[spec.getTensorsCount()];
        Map<String, Hyperparameters> groupHp = new LinkedHashMap<>();
        Set<String> groupNames = new HashSet<>();
        for (int gi = 0; gi < spec.getGroupsCount(); gi++) {
            ParamGroup g = spec.getGroups(gi);
            String field = "spec.groups[" + gi + "]";
            String groupName = g.getName().isEmpty() ? "group" + gi : g.getName();
            if (!groupNames.add(groupName)) {
                throw OptError.invalid("%s.name: duplicate group name '%s'", field, Echo.of(groupName));
            }
            for (String tensorName : g.getTensorsList()) {
                Integer idx = tensorIndex.get(tensorName);
                if (idx == null) {
                    throw OptError.invalid("%s.tensors: no tensor named '%s'", field, Echo.of(tensorName));
                }
                if (groupOf[idx] != null) {
                    throw OptError.invalid("%s.tensors: tensor '%s' is already in group '%s'",
                            field, Echo.of(tensorName), Echo.of(groupOf[idx]));
                }
                groupOf[idx] = groupName;
            }
            groupHp.put(groupName, hyperparameters(definition, config, field + ".hyperparameters",
                    g.getHyperparameters()));
        }
        boolean needsDefault = false;
        for (int i = 0; i < groupOf.length; i++) {
            if (groupOf[i] == null) {
                groupOf[i] = DEFAULT_GROUP;
                needsDefault = true;
            }
        }
        // Tensors no group names join "default": a group of that name if the spec has one, else
        // a group with the model's hyperparameters.
        if (needsDefault && !groupHp.containsKey(DEFAULT_GROUP)) {
            groupHp.put(DEFAULT_GROUP, hyperparameters(definition, config, null, null));
        }

        Map<String, GroupState> groups = new LinkedHashMap<>();
        for (Map.Entry<String, Hyperparameters> e : groupHp.entrySet()) {
            GroupState group = new GroupState(e.getKey(), definition, e.getValue());
            Algorithm algorithm = group.algorithm;
            if (training.lookahead() != null && training.lookahead().pullback() != Lookahead.Pullback.NONE
                    && algorithm.momentumSlot() < 0) {
                throw OptError.invalid("spec.optimizer.lookahead.pullback_momentum: '%s' acts on SGD's momentum"
                        + " buffer, which group '%s' (%s) does not have", config.getLookahead().getPullbackMomentum(),
                        Echo.of(e.getKey()), definition.name());
            }
            groups.put(e.getKey(), group);
        }
        List<String> wrapperSlots = Views.wrapperSlots(training.ema().size(), training.lookahead());

        long bytes = 0;
        for (int i = 0; i < sizes.size(); i++) {
            int slotCount = groups.get(groupOf[i]).algorithm.stateSlots().size() + wrapperSlots.size();
            try {
                bytes = Math.addExact(bytes, Math.addExact(engine.bytesFor(sizes.get(i), slotCount),
                        MemoryEstimates.SLOT_BYTES * slotCount));
            } catch (ArithmeticException e) { // a wrapped sum would pass the memory check
                throw OptError.exhausted("spec.tensors[%d].shape: model '%s' would need more than 2^63 bytes", i,
                        Echo.of(name));
            }
        }
        registry.reserve(name, bytes);
        List<TensorEntry> tensors = new ArrayList<>();
        try {
            for (int i = 0; i < sizes.size(); i++) {
                GroupState g = groups.get(groupOf[i]);
                List<String> slots = new ArrayList<>(g.algorithm.stateSlots());
                slots.addAll(wrapperSlots);
                EngineTensor storage = engine.allocate(sizes.get(i), slots.size());
                tensors.add(new TensorEntry(i, spec.getTensors(i).getName(), shapes.get(i), sizes.get(i), g, storage,
                        slots));
            }
        } catch (OutOfMemoryError e) {
            tensors.forEach(t -> t.storage.free());
            registry.release(bytes);
            throw OptError.exhausted("model '%s': out of memory allocating %d bytes; " + (engine.name().equals("cpu")
                    ? "raise the JVM heap (-Xmx) or lower --memory-limit" : "the device is full: lower --memory-limit"),
                    Echo.of(name), bytes).withReason(OptError.Reason.OUT_OF_MEMORY).with("model", Echo.of(name));
        }
        Model model = new Model(spec, tensors, new ArrayList<>(groups.values()), training, engine, bytes + metadata,
                registry, timers);
        return new PendingModel(model, registry, spec.hasState() ? spec.getState() : null);
    }

    /**
     * An enum field's value if it is one this server knows: protobuf keeps any other number, as
     * UNRECOGNIZED, and code comparing against the known values would silently take a default.
     */
    private static <E extends Enum<E> & ProtocolMessageEnum> E known(E value, int number, String field) {
        List<String> accepted = new ArrayList<>();
        for (E e : value.getDeclaringClass().getEnumConstants()) {
            if (!e.name().equals("UNRECOGNIZED")) {
                if (e.getNumber() == number) {
                    return value;
                }
                accepted.add(e.name() + " (" + e.getNumber() + ")");
            }
        }
        throw OptError.invalid("%s: unknown value %d; accepted: %s", field, number, String.join(", ", accepted));
    }

    /** The coordination's enums and counts: uint32 counts above 2^31 - 1 would read as negative ints. */
    private static void checkCoordination(Coordination c) {
        known(c.getMode(), c.getModeValue(), "spec.coordination.mode");
        known(c.getSync().getCombine(), c.getSync().getCombineValue(), "spec.coordination.sync.combine");
        known(c.getAsync().getStale(), c.getAsync().getStaleValue(), "spec.coordination.async.stale");
        nonNegativeInt(c.getSync().getK(), "spec.coordination.sync.k");
        nonNegativeInt(c.getSync().getMinK(), "spec.coordination.sync.min_k");
        nonNegativeInt(c.getSync().getTimeoutMs(), "spec.coordination.sync.timeout_ms");
    }

    private static void nonNegativeInt(int uint32, String field) {
        if (uint32 < 0) {
            throw OptError.invalid("%s: %d is out of range (must be at most %d)", field, Integer.toUnsignedLong(uint32),
                    Integer.MAX_VALUE);
        }
    }

    /** A saved run's weights view and counters: each count below 2^62, so that stepping on cannot wrap. */
    private static void checkCounters(ModelState state) {
        int view = state.getWeightsViewValue();
        if (view != ViewKind.VIEW_KIND_UNSPECIFIED_VALUE && view != ViewKind.VIEW_TRAIN_VALUE
                && view != ViewKind.VIEW_EVAL_VALUE) {
            throw OptError.invalid("spec.state.weights_view: must be VIEW_TRAIN or VIEW_EVAL (got %s)",
                    state.getWeightsView() == ViewKind.UNRECOGNIZED ? view : state.getWeightsView());
        }
        WireNumbers.count(state.getVersion(), "spec.state.version");
        WireNumbers.count(state.getScheduleStep(), "spec.state.schedule_step");
        WireNumbers.count(state.getLookaheadStep(), "spec.state.lookahead_step");
        for (int i = 0; i < state.getTensorStepsCount(); i++) {
            WireNumbers.count(state.getTensorSteps(i), "spec.state.tensor_steps[" + i + "]");
        }
        for (int i = 0; i < state.getEmaUpdatesCount(); i++) {
            WireNumbers.count(state.getEmaUpdates(i), "spec.state.ema_updates[" + i + "]");
        }
        for (int i = 0; i < state.getClientsCount(); i++) {
            WireNumbers.count(state.getClients(i).getLastStepId(), "spec.state.clients[" + i + "].last_step_id");
        }
    }

    /** The schedule, wrappers, clipping and reporting around the algorithm, validated. */
    private static Training training(OptimizerConfig config) {
        String field = "spec.optimizer";
        Schedule schedule = Schedules.parse(config.getSchedule().getType(), config.getSchedule().getParameters(),
                field + ".schedule");
        List<EmaShadow> ema = new ArrayList<>();
        Set<Double> decays = new HashSet<>();
        for (int i = 0; i < config.getEmaCount(); i++) {
            EmaShadowSpec e = new EmaShadowSpec(config.getEma(i), field + ".ema[" + i + "]");
            if (!decays.add(e.decay)) {
                throw OptError.invalid("%s.ema[%d].decay: two shadows with decay %s", field, i, e.decay);
            }
            ema.add(new EmaShadow(e.decay, e.every));
        }
        Lookahead lookahead = null;
        if (config.hasLookahead()) {
            dev.optsidecar.proto.v1.Lookahead la = config.getLookahead();
            if (la.getK() < 1) {
                throw OptError.invalid("%s.lookahead.k: must be >= 1 (got %d)", field, Integer.toUnsignedLong(la.getK()));
            }
            if (!(la.getAlpha() >= 0 && la.getAlpha() <= 1)) {
                throw OptError.invalid("%s.lookahead.alpha: must be in [0, 1] (got %s)", field, la.getAlpha());
            }
            Lookahead.Pullback pullback = switch (la.getPullbackMomentum()) {
                case "", "none" -> Lookahead.Pullback.NONE;
                case "reset" -> Lookahead.Pullback.RESET;
                case "pullback" -> Lookahead.Pullback.PULLBACK;
                default -> throw OptError.invalid("%s.lookahead.pullback_momentum: '%s' is not none, reset or pullback",
                        field, Echo.of(la.getPullbackMomentum()));
            };
            lookahead = new Lookahead(Integer.toUnsignedLong(la.getK()), la.getAlpha(), pullback);
        }
        double clip = config.getClipGradNorm();
        if (!(clip >= 0) || Double.isInfinite(clip)) {
            throw OptError.invalid("%s.clip_grad_norm: must be finite and >= 0, 0 for none (got %s)", field, clip);
        }
        return new Training(schedule, List.copyOf(ema), lookahead, clip, config.getReportUpdateNorm());
    }

    /** One EMA shadow's settings, validated. */
    private record EmaShadowSpec(double decay, long every) {
        EmaShadowSpec(dev.optsidecar.proto.v1.EmaShadow e, String field) {
            this(check(e.getDecay(), field), e.getEvery() == 0 ? 1 : Integer.toUnsignedLong(e.getEvery()));
        }

        private static double check(double decay, String field) {
            if (!(decay >= 0 && decay < 1)) {
                throw OptError.invalid("%s.decay: must be in [0, 1) (got %s)", field, decay);
            }
            return decay;
        }
    }

    private static Hyperparameters hyperparameters(AlgorithmDefinition def, OptimizerConfig config,
                                                   String groupField, Struct groupValues) {
        Map<String, Struct> layers = new LinkedHashMap<>();
        layers.put("spec.optimizer.hyperparameters", config.getHyperparameters());
        if (groupField != null) {
            layers.put(groupField, groupValues);
        }
        return Hyperparameters.merge(def, layers);
    }
}
