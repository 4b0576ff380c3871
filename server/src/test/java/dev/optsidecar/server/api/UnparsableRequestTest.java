package dev.optsidecar.server.api;

import dev.optsidecar.client.TensorData;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import io.grpc.CallOptions;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCalls;
import io.grpc.stub.StreamObserver;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertThrows;

/**
 * A request that does not parse as its message (here a string field holding invalid UTF-8) is
 * INVALID_ARGUMENT, not UNKNOWN, and a Step stream ended that way lets go of its trainer.
 */
class UnparsableRequestTest {
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.inProcess();
    /** Field 1 (a string in DescribeRequest and StepOpen), two bytes that are not UTF-8. */
    private static final byte[] BAD_STRING = {0x0A, 0x02, (byte) 0xC3, 0x28};

    private static final MethodDescriptor.Marshaller<byte[]> BYTES = new MethodDescriptor.Marshaller<>() {
        @Override
        public InputStream stream(byte[] value) {
            return new ByteArrayInputStream(value);
        }

        @Override
        public byte[] parse(InputStream stream) {
            try {
                return stream.readAllBytes();
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }
    };

    private static MethodDescriptor<byte[], byte[]> raw(String method, MethodDescriptor.MethodType type) {
        return MethodDescriptor.<byte[], byte[]>newBuilder().setFullMethodName("optsidecar.v1.Optimizer/" + method)
                .setType(type).setRequestMarshaller(BYTES).setResponseMarshaller(BYTES).build();
    }

    @Test
    void invalidUtf8InAUnaryRequestIsInvalidArgument() {
        StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> ClientCalls.blockingUnaryCall(
                f.channel(), raw("Describe", MethodDescriptor.MethodType.UNARY), CallOptions.DEFAULT, BAD_STRING));
        assertStatus(Status.Code.INVALID_ARGUMENT, e.getStatus(), "request: ", "Describe", "UTF-8");
    }

    @Test
    void invalidUtf8InAStepStreamIsInvalidArgumentAndDetachesTheTrainer() throws Exception {
        String model = "unparsable-step";
        f.client().register(ModelSpec.newBuilder().setName(model).addTensors(StandardModel.tensor("w", 2))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("SGD").setHyperparameters(struct("lr", 0.1)))
                .build(), List.of(TensorData.of(new float[2])));
        CompletableFuture<Status> closed = new CompletableFuture<>();
        StreamObserver<byte[]> requests = ClientCalls.asyncBidiStreamingCall(
                f.channel().newCall(raw("Step", MethodDescriptor.MethodType.BIDI_STREAMING), CallOptions.DEFAULT),
                new StreamObserver<>() {
                    @Override
                    public void onNext(byte[] value) {}

                    @Override
                    public void onError(Throwable t) {
                        closed.complete(Status.fromThrowable(t));
                    }

                    @Override
                    public void onCompleted() {
                        closed.complete(Status.OK);
                    }
                });
        requests.onNext(StepRequest.newBuilder().setOpen(StepOpen.newBuilder().setModel(model).setClientId("c"))
                .build().toByteArray());
        SidecarFixture.awaitTrue("the trainer attached",
                () -> f.describe(model).getCoordination().getTrainersList().contains("c"));
        byte[] badOpen = new byte[2 + BAD_STRING.length]; // StepRequest.open holding a StepOpen with a bad model name
        badOpen[0] = 0x0A;
        badOpen[1] = (byte) BAD_STRING.length;
        System.arraycopy(BAD_STRING, 0, badOpen, 2, BAD_STRING.length);
        requests.onNext(badOpen);
        assertStatus(Status.Code.INVALID_ARGUMENT, closed.get(SidecarFixture.WAIT_MS, TimeUnit.MILLISECONDS),
                "request: ", "Step", "UTF-8");
        SidecarFixture.awaitTrue("the trainer detached",
                () -> f.describe(model).getCoordination().getTrainersList().isEmpty());
        f.client().delete(model);
        f.assertServerHealthy("after-unparsable");
    }
}
