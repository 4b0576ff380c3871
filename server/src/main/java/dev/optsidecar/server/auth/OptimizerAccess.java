package dev.optsidecar.server.auth;

import dev.optsidecar.proto.v1.AddTensorsRequest;
import dev.optsidecar.proto.v1.DeleteRequest;
import dev.optsidecar.proto.v1.DescribeRequest;
import dev.optsidecar.proto.v1.ExportRequest;
import dev.optsidecar.proto.v1.ForkRequest;
import dev.optsidecar.proto.v1.FiguresRequest;
import dev.optsidecar.proto.v1.HistoryRequest;
import dev.optsidecar.proto.v1.LogFiguresRequest;
import dev.optsidecar.proto.v1.ListSnapshotsRequest;
import dev.optsidecar.proto.v1.PullRequest;
import dev.optsidecar.proto.v1.RegisterRequest;
import dev.optsidecar.proto.v1.RenewLeaseRequest;
import dev.optsidecar.proto.v1.RestoreRequest;
import dev.optsidecar.proto.v1.SnapshotRequest;
import dev.optsidecar.proto.v1.StepRequest;

import java.util.List;
import java.util.Map;
import java.util.function.Function;

/**
 * What each Optimizer RPC needs: for each message, the models it names and the role needed on
 * each. A message that names no model (a gradient chunk, List, ServerInfo) needs only a valid
 * token; List and ListSnapshots of every model show only the models the token may read. An RPC
 * without an entry (added later and not given one) needs an admin token.
 */
public final class OptimizerAccess {
    /** {@code role} needed on {@code model}, named by the request field {@code field}. */
    public record Need(Role role, String model, String field) {}

    private static final Map<String, Function<Object, List<Need>>> BY_METHOD = Map.ofEntries(
            Map.entry("ServerInfo", m -> List.of()),
            Map.entry("List", m -> List.of()),
            Map.entry("Describe", m -> List.of(reader(((DescribeRequest) m).getModel(), "model"))),
            Map.entry("Pull", m -> List.of(reader(((PullRequest) m).getModel(), "model"))),
            Map.entry("History", m -> List.of(reader(((HistoryRequest) m).getModel(), "model"))),
            Map.entry("Figures", m -> List.of(reader(((FiguresRequest) m).getModel(), "model"))),
            Map.entry("LogFigures", m -> List.of(trainer(((LogFiguresRequest) m).getModel(), "model"))),
            Map.entry("ListSnapshots", m -> ((ListSnapshotsRequest) m).getModel().isEmpty() ? List.of()
                    : List.of(reader(((ListSnapshotsRequest) m).getModel(), "model"))),
            Map.entry("Step", m -> ((StepRequest) m).hasOpen()
                    ? List.of(trainer(((StepRequest) m).getOpen().getModel(), "open.model")) : List.of()),
            Map.entry("Register", m -> ((RegisterRequest) m).hasSpec()
                    ? List.of(trainer(((RegisterRequest) m).getSpec().getName(), "spec.name")) : List.of()),
            Map.entry("AddTensors", m -> ((AddTensorsRequest) m).hasSpec()
                    ? List.of(trainer(((AddTensorsRequest) m).getSpec().getModel(), "spec.model")) : List.of()),
            Map.entry("Fork", m -> List.of(reader(((ForkRequest) m).getModel(), "model"),
                    trainer(((ForkRequest) m).getNewModel(), "new_model"))),
            Map.entry("Snapshot", m -> List.of(trainer(((SnapshotRequest) m).getModel(), "model"))),
            Map.entry("Export", m -> List.of(trainer(((ExportRequest) m).getModel(), "model"))),
            Map.entry("RenewLease", m -> List.of(trainer(((RenewLeaseRequest) m).getModel(), "model"))),
            Map.entry("Delete", m -> List.of(admin(((DeleteRequest) m).getModel(), "model"))),
            Map.entry("Restore", m -> {
                RestoreRequest r = (RestoreRequest) m;
                return r.getAsModel().isEmpty() ? List.of(admin(r.getModel(), "model"))
                        : List.of(admin(r.getModel(), "model"), admin(r.getAsModel(), "as_model"));
            }));

    private OptimizerAccess() {}

    /** Whether {@code method} (a bare name such as Step) has its own entry. */
    public static boolean covers(String method) {
        return BY_METHOD.containsKey(method);
    }

    /**
     * What {@code message} of {@code method} needs. For an RPC without an entry: admin, on the
     * model named "*" (which only a token for every model matches).
     */
    public static List<Need> needs(String method, Object message) {
        Function<Object, List<Need>> rule = BY_METHOD.get(method);
        return rule == null ? List.of(admin("*", "")) : rule.apply(message);
    }

    private static Need reader(String model, String field) {
        return new Need(Role.READER, model, field);
    }

    private static Need trainer(String model, String field) {
        return new Need(Role.TRAINER, model, field);
    }

    private static Need admin(String model, String field) {
        return new Need(Role.ADMIN, model, field);
    }
}
