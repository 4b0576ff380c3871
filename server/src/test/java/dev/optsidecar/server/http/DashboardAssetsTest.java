package dev.optsidecar.server.http;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.server.ListenAddress;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.server.TestData;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.durability.StepJournal;
import dev.optsidecar.server.model.Limits;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The dashboard's files as the HTTP endpoint serves them from the classpath, and what the page
 * asks of the JSON API: a model whose name holds slashes (a sweep's), sent percent-encoded; the
 * snapshot list without reading the data.
 */
class DashboardAssetsTest {
    private static final Pattern LOCAL_REFERENCE = Pattern.compile("(?:src|href)=\"([^\"]+)\"");
    private static final Pattern MODULE_IMPORT = Pattern.compile("from '\\./([^']+)'");
    private final HttpClient http = HttpClient.newHttpClient();
    private final ObjectMapper json = new ObjectMapper();
    private SocketServer server;
    private HttpApi api;

    private Path state;

    @BeforeEach
    void start(@TempDir Path dir) throws Exception {
        state = dir;
        Persistence.Options durable = new Persistence.Options(dir, 3, StepJournal.Sync.WRITE, 0, null, true);
        server = SocketServer.start(List.of(new ListenAddress.Tcp("127.0.0.1", 0)), 1, 64L << 20, durable,
                List.of(), Limits.DEFAULTS);
        api = HttpApi.start(new InetSocketAddress("127.0.0.1", 0), null, server.server().registry(),
                server.server().persistence(), HttpAccess.ALLOW_ALL);
    }

    @AfterEach
    void stop() {
        if (api != null) {
            api.close();
        }
        if (server != null) {
            server.close();
        }
    }

    @Test
    void pageAndEveryFileItLoadsAreServedFromTheJarWithTheirTypes() throws Exception {
        HttpResponse<String> page = get("/");
        assertEquals(200, page.statusCode());
        assertEquals("text/html; charset=utf-8", page.headers().firstValue("Content-Type").orElse(""));
        Map<String, String> types = Map.of("js", "text/javascript; charset=utf-8",
                "css", "text/css; charset=utf-8", "svg", "image/svg+xml");
        Matcher references = LOCAL_REFERENCE.matcher(page.body());
        int files = 0;
        while (references.find()) {
            String file = references.group(1);
            assertFalse(file.contains("//"), "the page loads nothing from elsewhere: " + file);
            HttpResponse<String> asset = get("/" + file);
            assertEquals(200, asset.statusCode(), file);
            assertEquals(types.get(file.substring(file.lastIndexOf('.') + 1)),
                    asset.headers().firstValue("Content-Type").orElse(""), file);
            files++;
            Matcher imports = MODULE_IMPORT.matcher(asset.body());
            while (imports.find()) {
                assertEquals(200, get("/" + imports.group(1)).statusCode(), file + " imports " + imports.group(1));
                files++;
            }
        }
        assertEquals(4, files, "index.html's stylesheet, icon and script, and the plot module the script imports");
    }

    @Test
    void modelNamedWithSlashesIsReadThroughItsEncodedName() throws Exception {
        String name = "sweep/radam/lr=0.003/seed=1";
        try (OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + server.port())) {
            client.register(TestData.spec(name, "RAdam", TestData.hp("lr", 0.003), 4).build(),
                    TestData.data(TestData.random(4, 1)));
        }
        String encoded = "/api/models/sweep%2Fradam%2Flr%3D0.003%2Fseed%3D1";
        HttpResponse<String> info = get(encoded);
        assertEquals(200, info.statusCode(), info.body());
        assertEquals(name, json.readTree(info.body()).get("name").asText());
        for (String route : List.of("/figures", "/history", "/snapshots")) {
            assertEquals(200, get(encoded + route).statusCode(), route);
        }
        HttpResponse<String> unencoded = get("/api/models/" + name);
        assertEquals(404, unencoded.statusCode(), "unencoded, the slashes are route separators");
        JsonNode error = json.readTree(unencoded.body());
        assertTrue(error.get("error").asText().contains("no such API route"), error.toString());
    }

    @Test
    void snapshotListCanLeaveTheDataUnread() throws Exception {
        SnapshotInfo snapshot;
        try (OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + server.port())) {
            client.register(TestData.spec("m", "Adam", TestData.hp("lr", 0.01), 64).build(),
                    TestData.data(TestData.random(64, 1)));
            snapshot = client.snapshot("m");
        }
        assertTrue(snapshotValid("/api/models/m/snapshots", snapshot.getId()));
        assertTrue(snapshotValid("/api/models/m/snapshots?verify=false", snapshot.getId()));

        // One data byte changed, the file's size kept: only a read of the data notices.
        Path data;
        try (Stream<Path> files = Files.list(state.resolve(snapshot.getPath()))) {
            data = files.filter(f -> f.toString().endsWith(".safetensors")).findFirst().orElseThrow();
        }
        byte[] bytes = Files.readAllBytes(data);
        bytes[bytes.length - 1] ^= 0x01;
        Files.write(data, bytes);
        assertFalse(snapshotValid("/api/models/m/snapshots", snapshot.getId()), "verify=true is the default");
        assertFalse(snapshotValid("/api/models/m/snapshots?verify=true", snapshot.getId()));
        assertTrue(snapshotValid("/api/models/m/snapshots?verify=false", snapshot.getId()));

        HttpResponse<String> bad = get("/api/models/m/snapshots?verify=yes");
        assertEquals(400, bad.statusCode());
        assertEquals("verify", json.readTree(bad.body()).get("field").asText());
    }

    @Test
    void briefModelListLeavesOutTensorsAndState() throws Exception {
        try (OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + server.port())) {
            client.register(TestData.spec("m", "RAdam", TestData.hp("lr", 0.01), 8, 3).build(),
                    TestData.data(TestData.random(8, 1), TestData.random(3, 2)));
        }
        JsonNode full = json.readTree(get("/api/models").body()).get("models").get(0);
        JsonNode brief = json.readTree(get("/api/models?brief=true").body()).get("models").get(0);
        assertEquals(2, full.get("tensors").size());
        assertTrue(full.has("state"));
        ObjectNode expected = full.deepCopy();
        expected.remove(List.of("tensors", "state"));
        assertEquals(expected, brief, "all but the tensors and state");
        assertEquals(brief, json.readTree(get("/api/models/m?brief=true").body()));
        assertEquals(full, json.readTree(get("/api/models/m?brief=false").body()));

        HttpResponse<String> bad = get("/api/models?brief=1");
        assertEquals(400, bad.statusCode());
        assertEquals("brief", json.readTree(bad.body()).get("field").asText());
    }

    /** Whether the listing at {@code path} calls snapshot {@code id} valid. */
    private boolean snapshotValid(String path, String id) throws Exception {
        HttpResponse<String> listed = get(path);
        assertEquals(200, listed.statusCode(), listed.body());
        for (JsonNode s : json.readTree(listed.body()).path("snapshots")) {
            if (s.get("id").asText().equals(id)) {
                return s.path("valid").asBoolean(false);
            }
        }
        throw new AssertionError("snapshot " + id + " is not listed: " + listed.body());
    }

    private HttpResponse<String> get(String path) throws Exception {
        return http.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + api.port() + path)).build(),
                HttpResponse.BodyHandlers.ofString());
    }
}
