package dev.optsidecar.server.optim.schedule;

import com.google.protobuf.Struct;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Function;

/** Builds a {@link Schedule} from its wire form, a type name and a Struct of parameters. */
public final class Schedules {
    private record Kind(List<String> parameters, Function<ScheduleParameters, Schedule> build) {
    }

    private static final Map<String, Kind> KINDS = kinds();

    private Schedules() {
    }

    private static Map<String, Kind> kinds() {
        Map<String, Kind> m = new LinkedHashMap<>();
        m.put(Constant.TYPE, new Kind(Constant.PARAMETERS, Constant::from));
        m.put(LinearWarmup.TYPE, new Kind(LinearWarmup.PARAMETERS, LinearWarmup::from));
        m.put(CosineWithWarmup.TYPE, new Kind(CosineWithWarmup.PARAMETERS, CosineWithWarmup::from));
        m.put(Wsd.TYPE, new Kind(Wsd.PARAMETERS, Wsd::from));
        m.put(WsdS.TYPE, new Kind(WsdS.PARAMETERS, WsdS::from));
        m.put(KerasRadam.TYPE, new Kind(KerasRadam.PARAMETERS, KerasRadam::from));
        return Collections.unmodifiableMap(m);
    }

    /** The type names {@link #parse} accepts, in a fixed order. */
    public static List<String> types() {
        return List.copyOf(KINDS.keySet());
    }

    /**
     * Validates and builds a schedule. An empty type means constant.
     *
     * @param field where the schedule sits in the request, e.g. {@code spec.optimizer.schedule}; error
     *              messages name {@code <field>.type} or {@code <field>.parameters.<name>}
     * @throws OptError INVALID_ARGUMENT for an unknown type or parameter, a missing parameter, a value
     *                  of the wrong JSON type, or one out of range
     */
    public static Schedule parse(String type, Struct parameters, String field) {
        String name = type == null || type.isEmpty() ? Constant.TYPE : type;
        Kind kind = KINDS.get(name);
        if (kind == null) {
            throw OptError.invalid("%s.type: unknown schedule type \"%s\" (known: %s)",
                    field, Echo.of(type), String.join(", ", KINDS.keySet()));
        }
        Struct given = parameters == null ? Struct.getDefaultInstance() : parameters;
        return kind.build().apply(new ScheduleParameters(field, name, given, kind.parameters()));
    }
}
