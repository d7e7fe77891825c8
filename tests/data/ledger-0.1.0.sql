PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE studies (
	study_uid VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	generation INTEGER NOT NULL, 
	reason TEXT, 
	calling_ae VARCHAR(16), 
	instance_count INTEGER NOT NULL, 
	first_received_at FLOAT NOT NULL, 
	last_received_at FLOAT NOT NULL, 
	queued_at FLOAT, 
	inferring_at FLOAT, 
	reported_at FLOAT, 
	delivered_at FLOAT, 
	finished_at FLOAT, 
	task_id VARCHAR(160), 
	model_id VARCHAR(64), 
	weights_kind VARCHAR(16), 
	report_uid VARCHAR(64), 
	report_path TEXT, 
	destination TEXT, 
	delivery_attempts INTEGER NOT NULL, 
	PRIMARY KEY (study_uid)
);
INSERT INTO studies VALUES('1.2.826.0.1.3680043.8.498.1','delivered',1,NULL,'MODALITY',1,1000.0,1000.0,1795437136.7487471103,1795437136.7560472488,1795437136.7601029873,1795437136.7679119109,1795437136.7679119109,'analyze:1.2.826.0.1.3680043.8.498.1:1','xrv-densenet121-res224-all','untrained-demo','2.25.1234567890','/var/lib/dicom-node/reports/2.25.1234567890.dcm','PACS@10.0.0.5:104',1);
INSERT INTO studies VALUES('1.2.826.0.1.3680043.8.498.2','not_applicable',1,'no applicable model','MODALITY',1,1100.0,1100.0,1795437136.7763400078,1795437136.7816138267,NULL,NULL,1795437136.7837963104,'analyze:1.2.826.0.1.3680043.8.498.2:1','xrv-densenet121-res224-all',NULL,NULL,NULL,NULL,0);
INSERT INTO studies VALUES('1.2.826.0.1.3680043.8.498.3','failed',1,'model xrv-densenet121-res224-all has no weights','MODALITY',1,1200.0,1200.0,1795437136.7917730808,1795437136.7960023879,NULL,NULL,1795437136.7982432842,'analyze:1.2.826.0.1.3680043.8.498.3:1','xrv-densenet121-res224-all',NULL,NULL,NULL,NULL,0);
INSERT INTO studies VALUES('1.2.826.0.1.3680043.8.498.4','reported',1,'delivery pending: association with PACS@10.0.0.5:104 not established','MODALITY',2,1300.0,1301.0,1795437136.8091859816,1795437136.8127317428,1795437136.8142158985,NULL,NULL,'analyze:1.2.826.0.1.3680043.8.498.4:1','xrv-densenet121-res224-all','real','2.25.999','/var/lib/dicom-node/reports/2.25.999.dcm',NULL,2);
INSERT INTO studies VALUES('1.2.826.0.1.3680043.8.498.5','receiving',1,NULL,'MODALITY',1,1400.0,1400.0,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,0);
CREATE TABLE instances (
	sop_instance_uid VARCHAR(64) NOT NULL, 
	study_uid VARCHAR(64) NOT NULL, 
	series_uid VARCHAR(64), 
	sop_class_uid VARCHAR(64) NOT NULL, 
	transfer_syntax_uid VARCHAR(64) NOT NULL, 
	path TEXT NOT NULL, 
	calling_ae VARCHAR(16), 
	received_at FLOAT NOT NULL, 
	PRIMARY KEY (sop_instance_uid), 
	FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
);
INSERT INTO instances VALUES('1.2.826.0.1.3680043.8.498.1.1','1.2.826.0.1.3680043.8.498.1','1.2.826.0.1.3680043.8.498.9','1.2.840.10008.5.1.4.1.1.1','1.2.840.10008.1.2.1','/var/lib/dicom-node/spool/1.2.826.0.1.3680043.8.498.1/1.2.826.0.1.3680043.8.498.1.1.dcm','MODALITY',1000.0);
INSERT INTO instances VALUES('1.2.826.0.1.3680043.8.498.2.1','1.2.826.0.1.3680043.8.498.2','1.2.826.0.1.3680043.8.498.9','1.2.840.10008.5.1.4.1.1.1','1.2.840.10008.1.2.1','/var/lib/dicom-node/spool/1.2.826.0.1.3680043.8.498.2/1.2.826.0.1.3680043.8.498.2.1.dcm','MODALITY',1100.0);
INSERT INTO instances VALUES('1.2.826.0.1.3680043.8.498.3.1','1.2.826.0.1.3680043.8.498.3','1.2.826.0.1.3680043.8.498.9','1.2.840.10008.5.1.4.1.1.1','1.2.840.10008.1.2.1','/var/lib/dicom-node/spool/1.2.826.0.1.3680043.8.498.3/1.2.826.0.1.3680043.8.498.3.1.dcm','MODALITY',1200.0);
INSERT INTO instances VALUES('1.2.826.0.1.3680043.8.498.4.1','1.2.826.0.1.3680043.8.498.4','1.2.826.0.1.3680043.8.498.9','1.2.840.10008.5.1.4.1.1.1','1.2.840.10008.1.2.1','/var/lib/dicom-node/spool/1.2.826.0.1.3680043.8.498.4/1.2.826.0.1.3680043.8.498.4.1.dcm','MODALITY',1300.0);
INSERT INTO instances VALUES('1.2.826.0.1.3680043.8.498.4.2','1.2.826.0.1.3680043.8.498.4','1.2.826.0.1.3680043.8.498.9','1.2.840.10008.5.1.4.1.1.1','1.2.840.10008.1.2.1','/var/lib/dicom-node/spool/1.2.826.0.1.3680043.8.498.4/1.2.826.0.1.3680043.8.498.4.2.dcm','MODALITY',1301.0);
INSERT INTO instances VALUES('1.2.826.0.1.3680043.8.498.5.1','1.2.826.0.1.3680043.8.498.5','1.2.826.0.1.3680043.8.498.9','1.2.840.10008.5.1.4.1.1.1','1.2.840.10008.1.2.1','/var/lib/dicom-node/spool/1.2.826.0.1.3680043.8.498.5/1.2.826.0.1.3680043.8.498.5.1.dcm','MODALITY',1400.0);
CREATE INDEX ix_studies_state ON studies (state);
CREATE INDEX ix_studies_last_received_at ON studies (last_received_at);
CREATE INDEX ix_instances_study_uid ON instances (study_uid);
COMMIT;
