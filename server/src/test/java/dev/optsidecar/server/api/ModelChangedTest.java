package dev.optsidecar.server.api;

import com.google.protobuf.ByteString;
import com.google.rpc.ErrorInfo;
import dev.optsidecar.proto.v1.GradientChunk;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.StatusAssertions;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.StreamObserver;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

import static dev.optsidecar.server.TestData.data;
import static dev.optsidecar.server.TestData.hp;
import static dev.optsidecar.server.TestData.le;
import static dev.optsidecar.server.TestData.random;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** A Step stream open on a model that gains tensors is ended with ABORTED, reason MODEL_CHANGED. */
class ModelChangedTest {
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.onSocket();

    @Test
    void anOpenStepStreamIsEndedWithModelChanged() throws Exception {
        f.client().register(ModelSpec.newBuilder().setName("m").addTensors(StandardModel.tensor("w", 4))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("SGD").setHyperparameters(hp("lr", 0.1)))
                .build(), data(random(4, 1)));
        CompletableFuture<StepResult> first = new CompletableFuture<>();
        CompletableFuture<Throwable> ended = new CompletableFuture<>();
        StreamObserver<StepRequest> requests = f.async().step(new StreamObserver<>() {
            @Override
            public void onNext(StepResponse r) {
                if (r.hasResult()) {
                    first.complete(r.getResult());
                }
            }

            @Override
            public void onError(Throwable t) {
                ended.complete(t);
            }

            @Override
            public void onCompleted() {
                ended.complete(null);
            }
        });
        requests.onNext(StepRequest.newBuilder().setOpen(StepOpen.newBuilder().setModel("m").setClientId("raw")).build());
        requests.onNext(StepRequest.newBuilder().setChunk(GradientChunk.newBuilder().setStepId(1).setTensor(0)
                .setData(ByteString.copyFrom(le(random(4, 2))))).build());
        requests.onNext(StepRequest.newBuilder().setCommit(StepCommit.newBuilder().setStepId(1)
                .setView(View.newBuilder().setKind(ViewKind.VIEW_NONE))).build());
        assertEquals(1, first.get(SidecarFixture.WAIT_MS, TimeUnit.MILLISECONDS).getVersion());

        f.client().addTensors("m", List.of(StandardModel.tensor("x", 3)), ParamGroup.newBuilder().setName("late").build(),
                data(random(3, 3)));

        Throwable t = ended.get(SidecarFixture.WAIT_MS, TimeUnit.MILLISECONDS);
        assertTrue(t instanceof StatusRuntimeException, () -> "the stream ended with " + t);
        Status status = Status.fromThrowable(t);
        StatusAssertions.assertStatus(Status.Code.ABORTED, status, "model 'm' changed", "open a new Step stream");
        ErrorInfo info = StatusAssertions.errorInfo(StatusAssertions.details(status, Status.trailersFromThrowable(t)));
        assertEquals("MODEL_CHANGED", info.getReason());
        assertEquals("m", info.getMetadataOrThrow("model"));
        SidecarFixture.awaitTrue("the trainer is no longer attached",
                () -> f.describe("m").getCoordination().getTrainersCount() == 0);
        f.client().delete("m");
        f.assertServerHealthy("after-model-changed");
    }
}
