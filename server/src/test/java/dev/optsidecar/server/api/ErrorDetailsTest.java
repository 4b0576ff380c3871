package dev.optsidecar.server.api;

import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import dev.optsidecar.client.ServerError;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.AsyncOptions;
import dev.optsidecar.proto.v1.Coordination;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.TestData;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.api.function.Executable;

import java.util.List;
import java.util.Map;
import java.util.OptionalLong;

import static dev.optsidecar.server.StandardModel.initialWeights;
import static dev.optsidecar.server.StandardModel.tensors;
import static dev.optsidecar.server.StatusAssertions.badRequest;
import static dev.optsidecar.server.StatusAssertions.details;
import static dev.optsidecar.server.StatusAssertions.errorInfo;
import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Representative errors carry the rich error details, read both from the raw status (ErrorInfo,
 * BadRequest) and through the Java client's {@link ServerError}: reason, field and metadata.
 */
class ErrorDetailsTest {
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.inProcess();

    /** Runs {@code call}, which must fail with {@code code}; checks the raw details and returns the client's reading. */
    private static ServerError fails(Status.Code code, Executable call) {
        StatusRuntimeException e = assertThrows(StatusRuntimeException.class, call);
        assertEquals(code, e.getStatus().getCode(), () -> "status " + e.getStatus());
        ServerError error = ServerError.of(e);
        ErrorInfo info = errorInfo(details(e.getStatus(), e.getTrailers()));
        assertEquals(info.getReason(), error.reason());
        assertEquals(info.getMetadataMap(), error.metadata());
        assertEquals(code, error.code());
        assertEquals(e.getStatus().getDescription(), error.message());
        return error;
    }

    @Test
    void badFieldNamesTheFieldInErrorInfoAndBadRequest() {
        ModelSpec spec = StandardModel.spec("bad-lr", "Adam", struct("lr", -1.0), NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED);
        StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
                () -> f.client().register(spec, tensors(initialWeights(1))));
        com.google.rpc.Status details = details(e.getStatus(), e.getTrailers());
        BadRequest bad = badRequest(details).orElseThrow(() -> new AssertionError("no BadRequest in " + details));
        assertEquals(1, bad.getFieldViolationsCount());
        assertEquals("spec.optimizer.hyperparameters.lr", bad.getFieldViolations(0).getField());
        assertEquals(e.getStatus().getDescription(), bad.getFieldViolations(0).getDescription());

        ServerError error = ServerError.of(e);
        assertEquals(ServerError.INVALID_FIELD, error.reason());
        assertEquals("spec.optimizer.hyperparameters.lr", error.field());
        assertEquals(Status.Code.INVALID_ARGUMENT, error.code());
    }

    @Test
    void unknownModelIsModelNotFoundWithTheModel() {
        ServerError error = fails(Status.Code.NOT_FOUND, () -> f.client().describe("nowhere"));
        assertTrue(error.is(ServerError.MODEL_NOT_FOUND), error::toString);
        assertEquals("nowhere", error.metadata().get("model"));
        assertEquals("model", error.field());
    }

    @Test
    void takenNameIsModelExists() {
        f.client().register(StandardModel.adamSpec("taken"), tensors(initialWeights(2)));
        ServerError error = fails(Status.Code.ALREADY_EXISTS,
                () -> f.client().register(StandardModel.adamSpec("taken"), tensors(initialWeights(3))));
        assertEquals(ServerError.MODEL_EXISTS, error.reason());
        assertEquals("taken", error.metadata().get("model"));
        assertEquals("spec.name", error.field());
        f.client().delete("taken");
    }

    @Test
    void staleGradientCarriesTheCurrentVersion() {
        Coordination reject = Coordination.newBuilder().setAsync(AsyncOptions.newBuilder().setMaxStaleness(1)).build();
        ModelSpec spec = TestData.spec("stale", "Adam", TestData.hp("lr", 0.01), 10).setCoordination(reject).build();
        f.client().register(spec, List.of(TensorData.of(new float[10])));
        try (Trainer a = f.client().trainer("stale", "a"); Trainer b = f.client().trainer("stale", "b")) {
            for (int s = 1; s <= 3; s++) {
                b.step(new float[][] {TestData.random(10, s)}, new float[][] {new float[10]});
            }
            a.computedAt(1);
            ServerError error = fails(Status.Code.FAILED_PRECONDITION,
                    () -> a.step(new float[][] {TestData.random(10, 9)}, new float[][] {new float[10]}));
            assertEquals(ServerError.STALE_GRADIENT, error.reason());
            assertEquals(OptionalLong.of(3), error.longValue("current_version"));
            assertEquals(OptionalLong.of(1), error.longValue("base_version"));
            assertEquals(OptionalLong.of(2), error.longValue("staleness"));
            assertEquals(OptionalLong.of(1), error.longValue("max_staleness"));
            assertEquals("a", error.metadata().get("client_id"));
        }
        f.client().delete("stale");
    }

    @Test
    void baseVersionAheadCarriesTheCurrentVersion() {
        f.client().register(StandardModel.adamSpec("ahead"), tensors(initialWeights(4)));
        try (Trainer t = f.client().trainer("ahead", "t")) {
            ServerError error = fails(Status.Code.INVALID_ARGUMENT,
                    () -> t.computedAt(5).step(StandardModel.grads(1), StandardModel.zeros()));
            assertEquals(ServerError.BASE_VERSION_AHEAD, error.reason());
            assertEquals("commit.base_version", error.field());
            assertEquals(Map.of("model", "ahead", "base_version", "5", "current_version", "0",
                    "field", "commit.base_version"), error.metadata());
        }
        f.client().delete("ahead");
    }

    @Test
    void memoryLimitCarriesTheLimit() throws Exception {
        long limit = 6_100_000;
        try (SidecarFixture small = SidecarFixture.inProcess(limit).start()) {
            small.client().register(StandardModel.adamSpec("fits"), tensors(initialWeights(1)));
            long used = small.server().registry().reservedBytes();
            ServerError error = fails(Status.Code.RESOURCE_EXHAUSTED,
                    () -> small.client().register(StandardModel.adamSpec("second"), tensors(initialWeights(2))));
            assertEquals(ServerError.MEMORY_LIMIT, error.reason());
            assertEquals("second", error.metadata().get("model"));
            assertEquals(OptionalLong.of(limit), error.longValue("limit"));
            // Free when the failing reservation was made: what the first model left, less the part of
            // the second registration already counted (its spec and metadata).
            long free = error.longValue("free").orElseThrow();
            assertTrue(free >= 0 && free <= limit - used, error::toString);
            assertTrue(error.longValue("needed").orElseThrow() > free, error::toString);
            assertEquals("", error.field());
        }
    }

    @Test
    void aThrowableWithoutStatusHasNoReason() {
        ServerError error = ServerError.of(new IllegalStateException("not from the server"));
        assertEquals(Status.Code.UNKNOWN, error.code());
        assertEquals("", error.reason());
        assertEquals("", error.field());
        assertEquals(Map.of(), error.metadata());
    }
}
