package dev.optsidecar.server.auth;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.ServerError;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.RestoreRequest;
import dev.optsidecar.proto.v1.ServerInfoRequest;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.server.StandardModel;
import io.grpc.ServiceDescriptor;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Every role against every Optimizer RPC, over a socket with the real client: the roles that
 * may make the call get its answer; the others get PERMISSION_DENIED naming the model and the
 * role needed, and the call changes nothing.
 */
class AccessTableTest {
    @TempDir
    static Path dir;
    private static TokenServer server;
    private static OptSidecarClient admin;

    /** What a call does with the role's client, on a model the admin registered for it. */
    @FunctionalInterface
    interface Call {
        void run(OptSidecarClient client, OptimizerGrpc.OptimizerBlockingStub stub, String model);
    }

    /** An RPC (or a use of one: setting weights is a Step), the least role that may make it, and the call. */
    record Row(String rpc, Role least, Call call) {}

    private static final List<Row> TABLE = List.of(
            new Row("ServerInfo", Role.READER, (c, stub, m) -> stub.serverInfo(ServerInfoRequest.getDefaultInstance())),
            new Row("List", Role.READER, (c, stub, m) -> c.list()),
            new Row("Describe", Role.READER, (c, stub, m) -> c.describe(m)),
            new Row("Pull", Role.READER, (c, stub, m) -> c.pull(m, TokenServer.data(zeros()))),
            new Row("History", Role.READER, (c, stub, m) -> c.history(m, 0)),
            new Row("Figures", Role.READER, (c, stub, m) -> c.figures(m, 0)),
            new Row("LogFigures", Role.TRAINER, (c, stub, m) -> c.logFigures(m, java.util.Map.of("accuracy", 0.5))),
            new Row("ListSnapshots", Role.READER, (c, stub, m) -> c.listSnapshots(m)),
            new Row("Step", Role.TRAINER, (c, stub, m) -> {
                try (Trainer t = c.trainer(m, "t")) {
                    t.step(TokenServer.data(TokenServer.weights(0.5f)), TokenServer.data(zeros()));
                }
            }),
            new Row("Step (set weights)", Role.TRAINER, (c, stub, m) -> {
                try (Trainer t = c.trainer(m, "t")) {
                    t.setWeights(TokenServer.data(TokenServer.weights(3)));
                }
            }),
            new Row("Register", Role.TRAINER, (c, stub, m) -> c.register(TokenServer.spec(m + "-new"),
                    TokenServer.data(TokenServer.weights(1)))),
            new Row("AddTensors", Role.TRAINER, (c, stub, m) -> c.addTensors(m,
                    List.of(StandardModel.tensor("extra", 2)), ParamGroup.newBuilder().setName("late").build(),
                    List.of(TensorData.of(new float[] {7, 8})))),
            new Row("Fork", Role.TRAINER, (c, stub, m) -> c.fork(m, m + "-fork", null)),
            new Row("Snapshot", Role.TRAINER, (c, stub, m) -> c.snapshot(m)),
            new Row("Export", Role.TRAINER, (c, stub, m) -> c.export(m, View.getDefaultInstance())),
            new Row("RenewLease", Role.TRAINER, (c, stub, m) -> c.renewLease(m)),
            new Row("Delete", Role.ADMIN, (c, stub, m) -> c.delete(m)),
            new Row("Restore", Role.ADMIN, (c, stub, m) -> c.restore(RestoreRequest.newBuilder().setModel(m)
                    .setReplace(true).build())));

    private static float[][] zeros() {
        return new float[][] {new float[6], new float[2]};
    }

    private static String token(Role role) {
        return role.label() + "-token";
    }

    @BeforeAll
    static void start() throws Exception {
        TokenFiles tokens = TokenFiles.of();
        for (Role role : Role.values()) {
            tokens.token(role.label(), token(role), role.label(), "*");
        }
        server = TokenServer.start(dir, tokens);
        admin = server.client(token(Role.ADMIN));
    }

    @AfterAll
    static void stop() throws Exception {
        server.close();
    }

    /** The models the admin sees, each with its version and tensor count: what a refused call must leave as it was. */
    private static Map<String, String> everything() {
        Map<String, String> state = new TreeMap<>();
        for (String m : admin.list()) {
            var info = admin.describe(m);
            state.put(m, "version " + info.getVersion() + ", " + info.getTensorsCount() + " tensors, "
                    + admin.listSnapshots(m).size() + " snapshots");
        }
        return state;
    }

    @Test
    void everyRoleAgainstEveryRpc() {
        List<String> failures = new ArrayList<>();
        for (Row row : TABLE) {
            for (Role role : Role.values()) {
                String model = (row.rpc().replaceAll("[^A-Za-z]", "") + "-" + role.label()).toLowerCase();
                admin.register(TokenServer.spec(model), TokenServer.data(TokenServer.weights(1)));
                try (Trainer t = admin.trainer(model, "setup")) { // a version for History and Restore to see
                    t.step(TokenServer.data(TokenServer.weights(0.1f)), TokenServer.data(zeros()));
                }
                OptSidecarClient client = server.client(token(role));
                OptimizerGrpc.OptimizerBlockingStub stub = server.blocking(token(role));
                String what = row.rpc() + " as " + role.label();
                Map<String, String> before = everything();
                if (role.includes(row.least())) {
                    try {
                        row.call().run(client, stub, model);
                    } catch (RuntimeException e) {
                        failures.add(what + " was refused: " + e);
                    }
                } else {
                    StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
                            () -> row.call().run(client, stub, model), what);
                    ServerError error = ServerError.of(e);
                    String expected = row.rpc().startsWith("Fork") ? model + "-fork"
                            : row.rpc().startsWith("Register") ? model + "-new" : model;
                    if (error.code() != Status.Code.PERMISSION_DENIED || !error.reason().equals(ServerError.ACCESS_DENIED)
                            || !expected.equals(error.metadata().get("model"))
                            || !row.least().label().equals(error.metadata().get("required_role"))
                            || !role.label().equals(error.metadata().get("role"))
                            || !error.message().contains("model '" + expected + "' needs role " + row.least().label())) {
                        failures.add(what + ": " + error);
                    }
                    assertEquals(before, everything(), what + " changed something");
                }
            }
        }
        assertTrue(failures.isEmpty(), () -> String.join("\n", failures));
    }

    @Test
    void everyRpcOfTheServiceIsInTheTableAndHasARule() {
        ServiceDescriptor service = OptimizerGrpc.getServiceDescriptor();
        for (MethodDescriptor<?, ?> method : service.getMethods()) {
            String name = method.getBareMethodName();
            assertTrue(OptimizerAccess.covers(name), name + " has no access rule");
            if (TABLE.stream().noneMatch(r -> r.rpc().equals(name))) {
                fail(name + " is not in the table");
            }
        }
    }
}
