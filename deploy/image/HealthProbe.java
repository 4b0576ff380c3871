package dev.optsidecar.deploy;

import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import java.util.concurrent.TimeUnit;

/**
 * The image's HEALTHCHECK: asks the server's plaintext health port whether it serves, exit 0 when
 * it does, 1 otherwise (the image has no shell and no grpc_health_probe; its java and the server
 * jar's gRPC classes do the job). The address is the argument, else 127.0.0.1 and
 * OPTSIDECAR_HEALTH_PORT (the image sets it), so the check follows the server's own setting.
 */
public final class HealthProbe {
    private HealthProbe() {}

    public static void main(String[] args) throws InterruptedException {
        String target = args.length > 0 ? args[0] : defaultTarget();
        ManagedChannel channel = ManagedChannelBuilder.forTarget(target).usePlaintext().build();
        int exitCode;
        try {
            HealthCheckResponse.ServingStatus status = HealthGrpc.newBlockingStub(channel)
                    .withDeadlineAfter(5, TimeUnit.SECONDS)
                    .check(HealthCheckRequest.getDefaultInstance())
                    .getStatus();
            System.out.println(target + ": " + status);
            exitCode = status == HealthCheckResponse.ServingStatus.SERVING ? 0 : 1;
        } catch (StatusRuntimeException e) {
            System.out.println(target + ": " + e.getStatus());
            exitCode = 1;
        } finally {
            channel.shutdownNow().awaitTermination(1, TimeUnit.SECONDS);
        }
        System.exit(exitCode);
    }

    private static String defaultTarget() {
        String port = System.getenv().getOrDefault("OPTSIDECAR_HEALTH_PORT", "8081");
        String bind = System.getenv().getOrDefault("OPTSIDECAR_HEALTH_BIND", "0.0.0.0");
        // A wildcard bind answers on loopback; a specific address only on itself.
        String host = bind.equals("0.0.0.0") || bind.equals("::") || bind.isEmpty() ? "127.0.0.1" : bind;
        return (host.contains(":") ? "[" + host + "]" : host) + ":" + port;
    }
}
